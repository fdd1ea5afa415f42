"""The end of `make run`: per-turbine summary (faults injected, detected, delay, false alerts) and a
PNG timeline per turbine (sensor signals, anomaly score, episodes, alerts, injected faults).

Scores in the timeline are recomputed offline from the samples the simulator published, with the
shared feature pipeline and the deployed bundle's ONNX graph: the same numbers the detector used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.ml.edge_bundle import verify
from shared.ml.features import compute_features, make_windows, window_starts
from shared.ml.metrics import Fault
from shared.ml.spec import default_spec

DETECTION_TOLERANCE_S = default_spec().evaluation.detection_tolerance_s  # the mission's turbines run the default spec

SIGNALS = ("wind_speed_rps", "rps", "voltage")  # raw columns plotted when present


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


@dataclass
class TurbineTimeline:
    turbine_id: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    episodes: list[EpisodeMark] = field(default_factory=list)
    alerts: list[AlertMark] = field(default_factory=list)
    model_version: int | None = None


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


def plot_timeline(tl: TurbineTimeline, scores: tuple[np.ndarray, np.ndarray], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min([s["ts"] for s in tl.samples[:1]] + [f.start for f in tl.faults] or [0.0])
    present = [c for c in SIGNALS if tl.samples and c in tl.samples[0]]
    fig, axes = plt.subplots(len(present) + 1, 1, figsize=(11, 2.0 * (len(present) + 1)), sharex=True)
    axes = np.atleast_1d(axes)
    ts = np.array([s["ts"] for s in tl.samples], dtype=np.float64) - t0
    for ax, column in zip(axes, present, strict=False):
        ax.plot(ts, [np.nan if s.get(column) is None else s[column] for s in tl.samples], lw=0.5)
        ax.set_ylabel(column, fontsize=8)
    score_ax = axes[-1]
    if len(scores[0]):
        score_ax.plot(scores[0] - t0, scores[1], lw=0.7, color="black", label="score / threshold")
    score_ax.axhline(1.0, color="grey", ls="--", lw=0.7)
    score_ax.set_ylabel("score / threshold", fontsize=8)
    end = ts[-1] if len(ts) else 0.0
    for ax in axes:
        for f in tl.faults:
            ax.axvspan(f.start - t0, f.end - t0, color="tab:red", alpha=0.12)
        for e in tl.episodes:
            ax.axvspan(e.started_at - t0, (e.ended_at if e.ended_at is not None else t0 + end) - t0,
                       color="tab:orange", alpha=0.25)
    for a in tl.alerts:
        score_ax.axvline(a.at - t0, color="tab:purple", lw=1.0)
    score_ax.set_xlabel("seconds since the first sample (red: injected fault, orange: episode, "
                        "purple: alert)", fontsize=8)
    fig.suptitle(f"{tl.turbine_id}: running v{tl.model_version}; scores recomputed with that bundle", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
