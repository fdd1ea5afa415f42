"""The end of `make run`: per-turbine summary (faults injected, detected, delay, false alerts) and a
PNG timeline per turbine (sensor signals, anomaly score, episodes, alerts, injected faults, model swaps).

Scores in the timeline are the device's, segment by segment: from each model swap the demo saw on the
device's health until the next one, the samples the simulator published are scored with the shared
feature pipeline and that version's bundle (its ONNX graph), the windows the detector scores with it.
Nothing before a device's first model is scored (it scored nothing), and nothing is scored with a model
the device was not running at the time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shared.ml.edge_bundle import verify
from shared.ml.features import compute_features, make_windows, window_starts
from shared.ml.metrics import Fault
from shared.ml.spec import default_spec

DETECTION_TOLERANCE_S = default_spec().evaluation.detection_tolerance_s  # the mission's turbines run the default spec

SIGNALS = ("wind_speed_rps", "rps", "voltage")  # raw columns plotted when present
UNITS = {"wind_speed_rps": "wind speed\n(anemometer rev/s)", "rps": "rotor speed\n(rev/s)",
         "voltage": "generator voltage\n(ADC count, 0-1023)"}  # shared/ml/schema.py


@dataclass
class EpisodeMark:
    episode_id: str
    opened_at: float
    started_at: float
    ended_at: float | None
    features: list[str]
    model_version: int | None


@dataclass
class AlertMark:
    at: float
    severity: str
    subject: str


@dataclass(frozen=True)
class ModelSwap:
    at: float  # epoch s: the device's first health report serving `version`
    version: int


@dataclass
class TurbineTimeline:
    turbine_id: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    episodes: list[EpisodeMark] = field(default_factory=list)
    alerts: list[AlertMark] = field(default_factory=list)
    model_version: int | None = None
    swaps: list[ModelSwap] = field(default_factory=list)


@dataclass(frozen=True)
class ScoreSegment:
    """The windows one model version scored on the device: end times (epoch s) and score / threshold."""

    version: int
    t: np.ndarray
    ratio: np.ndarray


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a killed writer
    return out


def match(timeline: TurbineTimeline, tolerance_s: float = DETECTION_TOLERANCE_S) -> dict[str, Any]:
    """Event-level outcome on one turbine, with the rule of shared.ml.metrics: a fault is detected when
    an episode opens within [start, end + tolerance]; an episode opening inside no fault is false."""
    detected, delays, false_episodes = 0, [], 0
    windows = [(f.start, f.end + tolerance_s) for f in timeline.faults]
    for f, (lo, hi) in zip(timeline.faults, windows, strict=True):
        opened = [e.opened_at for e in timeline.episodes if lo <= e.opened_at <= hi]
        if opened:
            detected += 1
            delays.append(min(opened) - f.start)
    for e in timeline.episodes:
        if not any(lo <= e.opened_at <= hi for lo, hi in windows):
            false_episodes += 1
    return {"faults": len(timeline.faults), "detected": detected,
            "mean_delay_s": float(np.mean(delays)) if delays else None, "false_episodes": false_episodes}


def summary_rows(timelines: list[TurbineTimeline]) -> list[list[str]]:
    rows = []
    for tl in timelines:
        m = match(tl)
        delay = "-" if m["mean_delay_s"] is None else f"{m['mean_delay_s']:.0f} s"
        rows.append([tl.turbine_id, "-" if tl.model_version is None else f"v{tl.model_version}",
                     str(m["faults"]), str(m["detected"]), delay, str(m["false_episodes"]), str(len(tl.alerts))])
    return rows


SUMMARY_HEADERS = ["turbine", "model", "faults injected", "detected", "mean delay", "false episodes", "alerts"]


def score_samples(samples: list[dict[str, Any]], bundle_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(window end times, score / threshold) of the bundle on these samples."""
    import onnxruntime as ort

    manifest = verify(bundle_dir)
    spec = manifest.bundle.spec
    total = spec.geometry.length
    if len(samples) < total:
        return np.zeros(0), np.zeros(0)
    t = np.array([s["ts"] for s in samples], dtype=np.float64)
    raw = {c: np.array([np.nan if s.get(c) is None else s[c] for s in samples], dtype=np.float64)
           for c in spec.input_columns}
    features = compute_features(raw, spec)
    starts = window_starts(t, spec)
    if len(starts) == 0:
        return np.zeros(0), np.zeros(0)
    x = make_windows(features, starts, spec.geometry.offsets())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(os.fspath(bundle_dir / manifest.model_file), options,
                                   providers=["CPUExecutionProvider"])
    scores = np.concatenate([session.run(["score"], {manifest.input_name: x[i:i + 4096]})[0]
                             for i in range(0, len(x), 4096)])
    return t[starts + total - 1], scores.astype(np.float64) / manifest.bundle.threshold


Scorer = Callable[[list[dict[str, Any]], Path], tuple[np.ndarray, np.ndarray]]


def score_segments(samples: list[dict[str, Any]], swaps: list[ModelSwap], bundle_of: Callable[[int], Path],
                   score: Scorer = score_samples) -> list[ScoreSegment]:
    """Each model's windows from its swap until the next swap: the scores the device computed. A model
    sees only the samples before the next swap (the windows it scored end before it)."""
    ordered = sorted(swaps, key=lambda s: s.at)
    segments = []
    for i, swap in enumerate(ordered):
        end = ordered[i + 1].at if i + 1 < len(ordered) else float("inf")
        t, ratio = score([s for s in samples if s["ts"] < end], bundle_of(swap.version))
        keep = t >= swap.at
        segments.append(ScoreSegment(swap.version, t[keep], ratio[keep]))
    return segments


def _days(epoch: Any) -> Any:
    """Epoch seconds (a number or an array) as matplotlib date numbers (days since its epoch, UTC)."""
    import matplotlib.dates as mdates

    return mdates.date2num(datetime(1970, 1, 1, tzinfo=UTC)) + np.asarray(epoch, dtype=np.float64) / 86400.0


def plot_timeline(tl: TurbineTimeline, segments: list[ScoreSegment], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = timeline_figure(tl, segments)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def timeline_figure(tl: TurbineTimeline, segments: list[ScoreSegment]) -> Any:
    """The timeline as a matplotlib figure: one panel per signal (with its unit) and the score panel, on a
    clock-time axis in UTC; injected faults as named bands, episodes hatched over them, alerts and model
    swaps as lines, and a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    present = [c for c in SIGNALS if tl.samples and c in tl.samples[0]]
    fig, axes = plt.subplots(len(present) + 1, 1, figsize=(12, 2.1 * (len(present) + 1) + 0.8), sharex=True)
    axes = np.atleast_1d(axes)
    ts = np.array([s["ts"] for s in tl.samples], dtype=np.float64)
    for ax, column in zip(axes, present, strict=False):
        ax.plot(_days(ts), [np.nan if s.get(column) is None else s[column] for s in tl.samples], lw=0.5,
                color="tab:blue")
        ax.set_ylabel(UNITS.get(column, column), fontsize=8)
    score_ax = axes[-1]
    colours = ["black", "tab:cyan", "tab:olive", "tab:pink"]  # not the bands' or markers' colours
    handles: list[Any] = []
    for k, seg in enumerate(segments):
        if len(seg.t):
            line, = score_ax.plot(_days(seg.t), seg.ratio, lw=0.8, color=colours[k % len(colours)],
                                  label=f"v{seg.version}: score / threshold")
            handles.append(line)
    score_ax.axhline(1.0, color="grey", ls="--", lw=0.7)
    score_ax.set_ylabel("anomaly score\n(score / threshold)", fontsize=8)
    end = float(ts[-1]) if len(ts) else max([f.end for f in tl.faults] or [0.0])
    for ax in axes:
        for f in tl.faults:  # drawn solid over everything else's background: the band to find first
            ax.axvspan(_days(f.start), _days(f.end), color="tab:red", alpha=0.28, lw=0, zorder=0)
        for swap in tl.swaps:
            ax.axvline(_days(swap.at), color="tab:green", ls="-.", lw=1.2, zorder=3)
    for e in tl.episodes:  # hatched, unfilled: the fault band under it stays visible
        score_ax.axvspan(_days(e.started_at), _days(e.ended_at if e.ended_at is not None else end),
                         facecolor="none", edgecolor="tab:orange", hatch="///", lw=0.8, zorder=1)
    for a in tl.alerts:
        score_ax.axvline(_days(a.at), color="tab:purple", lw=1.0, zorder=4)
    top = blended_transform_factory(axes[0].transData, axes[0].transAxes)
    for f in tl.faults:
        axes[0].text(float(_days((f.start + f.end) / 2)), 1.02, f"{f.fault} ({f.severity})", transform=top,
                     ha="center", va="bottom", fontsize=7, color="tab:red")
    bottom = blended_transform_factory(score_ax.transData, score_ax.transAxes)
    for swap in tl.swaps:
        score_ax.text(float(_days(swap.at)), 0.97, f" v{swap.version}", transform=bottom, ha="left", va="top",
                      fontsize=7, color="tab:green")
    handles += [Line2D([], [], color="grey", ls="--", lw=0.7, label="alarm level (score = threshold)"),
                Patch(facecolor="tab:red", alpha=0.28, label="injected fault"),
                Patch(facecolor="none", edgecolor="tab:orange", hatch="///", label="detector episode"),
                Line2D([], [], color="tab:purple", lw=1.0, label="alert sent"),
                Line2D([], [], color="tab:green", ls="-.", lw=1.2, label="model swapped on the device")]
    score_ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
    first = ts[0] if len(ts) else (tl.faults[0].start if tl.faults else 0.0)
    day = datetime.fromtimestamp(float(first), UTC).strftime("%Y-%m-%d")
    score_ax.set_xlabel(f"time (UTC) on {day}", fontsize=8)
    running = "no model" if tl.model_version is None else f"v{tl.model_version}"
    fig.suptitle(f"{tl.turbine_id}: sensors and the anomaly score the device computed with each model "
                 f"(now running {running})", fontsize=10)
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    return fig
