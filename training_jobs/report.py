"""The training report PNG: loss curves and per-feature error distributions against thresholds."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def write_report(path: Path, history: list[dict[str, float]], val_errors: np.ndarray,
                 thresholds: np.ndarray, feature_names: list[str], title: str) -> Path:
    n = len(feature_names)
    cols = 3
    rows = 1 + (n + cols - 1) // cols
    fig = plt.figure(figsize=(4.2 * cols, 3.0 * rows), dpi=90)
    ax = fig.add_subplot(rows, 1, 1)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked MSE (normalised)")
    ax.set_title(title)
    ax.legend()
    for i, name in enumerate(feature_names):
        sub = fig.add_subplot(rows, cols, cols + i + 1)
        errors = val_errors[:, i]
        upper = max(float(np.quantile(errors, 0.9999)), float(thresholds[i])) * 1.3
        sub.hist(errors, bins=80, range=(0, upper), color="tab:blue", alpha=0.8, log=True)
        sub.axvline(float(thresholds[i]), color="tab:red", linestyle="--", label="threshold")
        sub.set_title(f"{name}: normal validation error")
        sub.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
