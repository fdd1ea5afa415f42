"""The training report PNG: the candidates' validation figures and the choice, the chosen model's
normal held-out scores against its threshold, and the autoencoder's loss curves when it has them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:
    from training_jobs.selection import Candidate

FIGURES = (("event_f1", "event F1"), ("point_f1", "point F1"), ("false_alarms_per_turbine_day", "false alarms/day"))


def write_report(path: Path, title: str, candidates: list[Candidate], chosen: str, history: list[dict[str, float]],
                 threshold: float) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=90)
    _candidates(axes[0], candidates, chosen)
    _scores(axes[1], next(c for c in candidates if c.family == chosen), threshold)
    _history(axes[2], history, chosen)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _candidates(ax: plt.Axes, candidates: list[Candidate], chosen: str) -> None:
    from shared.ml.metrics import headline

    width = 0.8 / max(len(candidates), 1)
    for i, c in enumerate(candidates):
        figures = headline(c.validation)
        values = [figures.get(key) or 0.0 for key, _ in FIGURES]
        bars = ax.bar(np.arange(len(FIGURES)) + i * width, values, width,
                      label=c.family + (" (chosen)" if c.family == chosen else ""),
                      edgecolor="black" if c.family == chosen else None, linewidth=2 if c.family == chosen else 0)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(FIGURES)) + width * (len(candidates) - 1) / 2, [label for _, label in FIGURES])
    ax.set_title("candidates on validation faults")
    ax.legend(fontsize=8)


def _scores(ax: plt.Axes, candidate: Candidate, threshold: float) -> None:
    calibration = candidate.calibration
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.axvline(calibration.highest, color="tab:orange", linestyle=":",
               label=f"highest k-of-n level seen {calibration.highest:.3g}")
    if calibration.location is not None and calibration.scale:
        x = np.linspace(1e-6, max(threshold, calibration.highest) * 1.3, 200)
        z = (np.log(x) - calibration.location) / calibration.scale  # the fit is on log(maxima)
        ax.plot(x, np.exp(-z - np.exp(-z)) / (calibration.scale * x), color="tab:blue",
                label="fitted law of the block maxima")
    ax.set_xlabel("anomaly score")
    ax.set_title(f"{candidate.family}: calibration ({calibration.method}, {calibration.windows} normal windows)")
    ax.legend(fontsize=7)


def _history(ax: plt.Axes, history: list[dict[str, float]], chosen: str) -> None:
    if not history:
        ax.text(0.5, 0.5, f"{chosen}: fitted in closed form\n(no training epochs)", ha="center", va="center")
        ax.set_axis_off()
        return
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked MSE (standardised)")
    ax.set_title(f"{chosen}: training")
    ax.legend()
