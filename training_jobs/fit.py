"""Fit the autoencoder on normal windows and derive per-feature thresholds."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from shared.errors import TrainingError
from training_jobs.hyperparameters import Hyperparameters
from training_jobs.model import ScoringModel, build_autoencoder, masked_loss


@dataclass
class FitResult:
    scoring: ScoringModel
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0


def normalisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over every sample of (W, F, L) windows, ignoring NaN."""
    flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).astype(np.float64)
    mean = np.nanmean(flat, axis=1)
    std = np.nanstd(flat, axis=1, ddof=1)
    if not np.all(np.isfinite(mean)):
        raise TrainingError("a feature has no valid sample in the training windows")
    std = np.where(np.isfinite(std) & (std > 1e-9), std, 1.0)
    return mean, std


def _prepare(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    valid = ~np.isnan(x)
    z = np.where(valid, (x - mean[None, :, None]) / std[None, :, None], 0.0).astype(np.float32)
    return torch.from_numpy(z), torch.from_numpy(valid.astype(np.float32))


def fit(train_x: np.ndarray, val_x: np.ndarray, hp: Hyperparameters,
        log: Callable[[str], None] = lambda line: print(line, file=sys.stdout, flush=True)) -> FitResult:
    if len(train_x) < hp.batch_size // 4 or len(val_x) == 0:
        raise TrainingError(f"too little normal data: {len(train_x)} training and {len(val_x)} validation "
                            "windows (add more data or lower batch_size)")
    torch.manual_seed(hp.seed)
    if hp.threads > 0:
        torch.set_num_threads(hp.threads)
    mean, std = normalisation(train_x)
    n_features, length = train_x.shape[1], train_x.shape[2]
    ae = build_autoencoder(hp.architecture, n_features, length, hp.channels, hp.latent, hp.dropout)
    z_train, v_train = _prepare(train_x, mean, std)
    z_val, v_val = _prepare(val_x, mean, std)
    optimiser = torch.optim.Adam(ae.parameters(), lr=hp.learning_rate)
    # cosine decay to 5 % of the initial rate over the planned epochs: a lower final loss for the same time
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=hp.epochs, eta_min=hp.learning_rate / 20)
    generator = torch.Generator().manual_seed(hp.seed)
    best, best_state, best_epoch, stale = float("inf"), None, 0, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, hp.epochs + 1):
        started = time.perf_counter()
        ae.train()
        order = torch.randperm(len(z_train), generator=generator)
        total, batches = 0.0, 0
        for i in range(0, len(order), hp.batch_size):
            idx = order[i:i + hp.batch_size]
            optimiser.zero_grad()
            loss = masked_loss(ae(z_train[idx]), z_train[idx], v_train[idx])
            loss.backward()
            optimiser.step()
            total, batches = total + float(loss), batches + 1
        schedule.step()
        ae.eval()
        with torch.no_grad():
            val_loss = float(np.mean([float(masked_loss(ae(z_val[i:i + 4096]), z_val[i:i + 4096],
                                                        v_val[i:i + 4096]))
                                      for i in range(0, len(z_val), 4096)]))
        train_loss = total / max(batches, 1)
        if not np.isfinite(train_loss):
            raise TrainingError(f"training diverged at epoch {epoch} (loss {train_loss}); lower learning_rate")
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "seconds": seconds})
        log(f"epoch {epoch}/{hp.epochs} train_loss={train_loss:.5f}; val_loss={val_loss:.5f}; "
            f"{seconds:.1f}s")
        if val_loss < best - 1e-6:
            best, best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in ae.state_dict().items()}
        else:
            stale += 1
            if stale >= hp.patience:
                log(f"early stop: no validation improvement for {hp.patience} epochs")
                break
    assert best_state is not None
    ae.load_state_dict(best_state)
    scoring = ScoringModel(ae, torch.tensor(mean), torch.tensor(std))
    scoring.eval()
    return FitResult(scoring, history, best_epoch)


def thresholds_from(errors: np.ndarray, quantile: float, margin: float) -> np.ndarray:
    """Per-feature threshold = quantile of normal validation errors x margin (labels never used)."""
    if len(errors) == 0:
        raise TrainingError("no normal validation windows to set thresholds on")
    values = np.quantile(errors.astype(np.float64), quantile, axis=0) * margin
    return np.maximum(values, 1e-6)
