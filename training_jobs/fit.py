"""Fit one model family on normal windows: standardisation, then PCA or the autoencoder."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from shared.errors import TrainingError
from shared.ml.feasibility import glitch_distance, glitch_limit
from shared.ml.spec import FeatureSpec
from training_jobs.hyperparameters import Hyperparameters
from training_jobs.model import (
    AutoencoderScorer,
    PCAScorer,
    Preprocess,
    Scorer,
    build_autoencoder,
    masked_loss,
    torch_threads,
)

Log = Callable[[str], None]
BATCH = 4096  # windows per forward pass when scoring
# Below this many input values per training batch the autoencoder fits on one thread (400 rows at 1 Hz, batches of
# 38 x 8 x 30: 8.2 s on one thread, 15.6 s on two; 20 Hz batches of 256 x 6 x 100 take the same time either way).
SMALL_BATCH_VALUES = 65_536
# The frozen-sensor check holds for a feature that held one value over none of at least this many training windows
FROZEN_CHECK_WINDOWS = 200


def _stdout(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


@dataclass
class Fitted:
    scorer: Scorer
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    settings: dict[str, float] = field(default_factory=dict)  # what the data-sized defaults became


def preprocess_for(spec: FeatureSpec, x: np.ndarray, glitch_filter: bool = False) -> Preprocess:
    """Standardisation fitted on (W, F, geometry.width) windows: per-feature mean and std of the scored
    samples after the drift baseline (NaN ignored); the frozen-sensor check for the features that never
    held one value over a window (a setpoint or a coarse reading that often stands still is left out);
    with `glitch_filter`, the limits beyond which a lone reading is a glitch (else none is)."""
    g = spec.geometry
    drift = torch.tensor(spec.drift_mask, dtype=torch.float32)
    n = spec.n_features
    raw = Preprocess(torch.zeros(n), torch.ones(n), drift, g.context_inputs, g.length,
                     hidden_inputs=spec.hidden_inputs, alarm=spec.alarm_mask)
    limits = glitch_limits(x[..., g.context_inputs:]) if glitch_filter else torch.full((1, n, 1), math.inf)
    raw.glitch_limit.copy_(limits)
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), BATCH):
            scored, _ = raw.relative(torch.from_numpy(x[i:i + BATCH]))
            parts.append(scored.numpy().astype(np.float64))
    flat = np.moveaxis(np.concatenate(parts), 1, 0).reshape(n, -1)
    with np.errstate(all="ignore"):
        mean = np.nanmean(flat, axis=1)
        std = np.nanstd(flat, axis=1, ddof=1)
    if not np.all(np.isfinite(mean)):
        bad = [spec.features[j] for j in np.flatnonzero(~np.isfinite(mean))]
        raise TrainingError(f"feature(s) {bad} have no valid sample in the training windows")
    std = np.where(np.isfinite(std) & (std > 1e-9 * np.maximum(1.0, np.abs(mean))), std, 1.0)
    prep = Preprocess(torch.tensor(mean), torch.tensor(std), drift, g.context_inputs, g.length,
                      frozen_check_for(raw, x[..., g.context_inputs:]), spec.hidden_inputs, spec.alarm_mask)
    prep.glitch_limit.copy_(limits)
    return prep


GLITCH_WINDOWS = 2000  # evenly spread training windows are enough to read the limits' quantile


def glitch_limits(scored: np.ndarray) -> torch.Tensor:
    """(1, F, 1): per feature, shared.ml.feasibility.glitch_limit of the samples' distances from the median of
    three over the (W, F, L) training windows; inf (never a glitch) on windows shorter than three samples."""
    n = scored.shape[1]
    if scored.shape[-1] < 3 or not len(scored):
        return torch.full((1, n, 1), math.inf)
    pick = np.unique(np.linspace(0, len(scored) - 1, min(len(scored), GLITCH_WINDOWS)).astype(int))
    distance, _ = glitch_distance(scored[pick].astype(np.float64))
    limit = glitch_limit(np.moveaxis(distance, 1, 0).reshape(n, -1), axis=1)
    return torch.tensor(limit, dtype=torch.float32).reshape(1, n, 1)


def frozen_check_for(prep: Preprocess, scored: np.ndarray) -> torch.Tensor:
    """(F,) 1.0 for each feature never frozen (Preprocess.frozen) over the (W, F, L) training windows, given
    enough of them."""
    if len(scored) < FROZEN_CHECK_WINDOWS:
        return torch.zeros(scored.shape[1])
    frozen = torch.zeros(scored.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        for i in range(0, len(scored), BATCH):
            frozen[i:i + BATCH] = prep.frozen(torch.from_numpy(np.ascontiguousarray(scored[i:i + BATCH])))
    return (~frozen.any(dim=0)).float()


def score_windows(scorer: Scorer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W, F, C+L) windows -> score (W,), contributions (W, F), missing (W, F), float32, as the graph."""
    scorer.eval()
    outs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    with torch.no_grad():
        for i in range(0, len(x), BATCH):
            s, c, m = scorer(torch.from_numpy(np.ascontiguousarray(x[i:i + BATCH], dtype=np.float32)))
            outs.append((s.numpy(), c.numpy(), m.numpy()))
    if not outs:
        n = x.shape[1]
        return np.zeros(0, np.float32), np.zeros((0, n), np.float32), np.zeros((0, n), np.float32)
    return tuple(np.concatenate([o[i] for o in outs]) for i in range(3))  # type: ignore[return-value]


SCALE_QUANTILE = 0.99


def typical(values: np.ndarray) -> np.ndarray:
    """Per column, the scale a feature's error is measured in: its 99th percentile on the training
    windows, so every feature exceeds 1 as rarely as the others and none dominates the score by its
    tail alone."""
    with np.errstate(all="ignore"):
        q = np.nanquantile(values.astype(np.float64), SCALE_QUANTILE, axis=0)
    return np.where(np.isfinite(q) & (q > 1e-9), q, 1.0)


TAIL_QUANTILE, TAIL_RATIO = 0.999, 1.6
MIN_TAIL_WINDOWS = 10_000  # ten windows beyond the 99.9th percentile
TAIL_POWER_RANGE = (0.5, 3.0)


def tail_powers(values: np.ndarray) -> np.ndarray:
    """Per column of errors (windows, F): the power that takes its 99.9th percentile, measured in its 99th,
    to TAIL_RATIO, so every feature's tail has one shape; 1 with fewer than MIN_TAIL_WINDOWS windows
    (too few to read a 99.9th percentile) or no spread between the two."""
    if len(values) < MIN_TAIL_WINDOWS:
        return np.ones(values.shape[1])
    with np.errstate(all="ignore"):
        low, high = np.nanquantile(values.astype(np.float64), [SCALE_QUANTILE, TAIL_QUANTILE], axis=0)
        power = math.log(TAIL_RATIO) / np.log(high / low)
    return np.where(np.isfinite(power) & (power > 0), np.clip(power, *TAIL_POWER_RANGE), 1.0)


def _set_tails(scorer: Scorer, spec: FeatureSpec, errors: np.ndarray, log: Log) -> None:
    powers = tail_powers(errors)
    scorer.tail_power.copy_(torch.tensor(powers).reshape(1, -1))
    if (powers != 1.0).any():
        log("tail powers: " + ", ".join(f"{name} {p:.2f}" for name, p in zip(spec.features, powers, strict=True)))


# -- PCA ---------------------------------------------------------------------------------------------
def fit_pca(spec: FeatureSpec, train_x: np.ndarray, hp: Hyperparameters, log: Log = _stdout,
            glitch_filter: bool = False) -> Fitted:
    """Principal components keeping `pca_variance` of the standardised windows' variance; Q per feature
    and T² normalised by their means on the training windows."""
    started = time.perf_counter()
    prep = preprocess_for(spec, train_x, glitch_filter)
    with torch.no_grad():
        flat = np.concatenate([prep(torch.from_numpy(train_x[i:i + BATCH]))[0].flatten(1).numpy()
                               for i in range(0, len(train_x), BATCH)]).astype(np.float64)
    center = flat.mean(axis=0)
    centred = flat - center
    covariance = centred.T @ centred / max(len(flat) - 1, 1)
    variance, vectors = np.linalg.eigh(covariance)
    order = np.argsort(variance)[::-1]
    variance, vectors = np.clip(variance[order], 0.0, None), vectors[:, order]
    share = np.cumsum(variance) / max(float(variance.sum()), 1e-12)
    wanted = int(np.searchsorted(share, hp.pca_variance)) + 1
    k = max(1, min(wanted, len(variance) - 1, len(flat) - 1))
    scorer = PCAScorer(prep, torch.tensor(center), torch.tensor(vectors[:, :k]), torch.tensor(variance[:k]),
                       torch.ones(spec.n_features), 1.0, hp.pca_t2_weight)
    q_parts, t2_parts = [], []
    with torch.no_grad():
        for i in range(0, len(train_x), BATCH):
            q, t2, _ = scorer.parts(torch.from_numpy(train_x[i:i + BATCH]))
            q_parts.append(q.numpy())
            t2_parts.append(t2.numpy())
    q_all = np.concatenate(q_parts)
    scorer.q_scale.copy_(torch.tensor(typical(q_all)).reshape(1, -1))
    _set_tails(scorer, spec, q_all, log)
    scorer.t2_scale.copy_(torch.tensor(float(typical(np.concatenate(t2_parts)[:, None])[0])))
    seconds = time.perf_counter() - started
    log(f"pca: {k} of {flat.shape[1]} components keep {share[k - 1]:.1%} of the variance "
        f"({len(flat)} windows, {seconds:.1f}s)")
    return Fitted(scorer, [], 0, {"components": k, "explained_variance": float(share[k - 1]),
                                  "t2_weight": hp.pca_t2_weight, "seconds": seconds})


# -- autoencoder ------------------------------------------------------------------------------------
def autoencoder_settings(hp: Hyperparameters, windows: int, n_features: int, length: int) -> dict[str, int]:
    """The data-sized defaults: batch ~ windows / 8 (16..256), epochs for about `train_steps` updates
    (10..200), patience a twentieth of the epochs (>= 5), a bottleneck of at most a quarter of the inputs."""
    batch = hp.batch_size or int(min(256, max(16, windows // 8)))
    per_epoch = max(1, math.ceil(windows / batch))
    epochs = hp.epochs or int(min(200, max(10, math.ceil(hp.train_steps / per_epoch))))
    return {"batch_size": batch, "epochs": epochs, "patience": hp.patience or max(5, epochs // 20),
            "latent": int(min(hp.latent, max(2, n_features * length // 4))), "channels": hp.channels}


def fit_autoencoder(spec: FeatureSpec, train_x: np.ndarray, val_x: np.ndarray, hp: Hyperparameters,
                    log: Log = _stdout, glitch_filter: bool = False) -> Fitted:
    """Fits on one thread when a batch holds fewer than SMALL_BATCH_VALUES inputs: so little work per step
    costs more to share between threads than it gains."""
    g = spec.geometry
    settings = autoencoder_settings(hp, len(train_x), spec.n_features, g.length)
    batch = (settings["batch_size"], spec.n_features, g.width)
    if math.prod(batch) >= SMALL_BATCH_VALUES or torch.get_num_threads() == 1:
        return _fit_autoencoder(spec, train_x, val_x, hp, settings, log, glitch_filter)
    log(f"autoencoder: 1 thread (batches of {' x '.join(map(str, batch))} inputs are too small to share)")
    with torch_threads(1):
        return _fit_autoencoder(spec, train_x, val_x, hp, settings, log, glitch_filter)


def _fit_autoencoder(spec: FeatureSpec, train_x: np.ndarray, val_x: np.ndarray, hp: Hyperparameters,
                     settings: dict[str, int], log: Log, glitch_filter: bool) -> Fitted:
    g = spec.geometry
    torch.manual_seed(hp.seed)
    prep = preprocess_for(spec, train_x, glitch_filter)
    ae = build_autoencoder(hp.architecture, spec.n_features, g.length, settings["channels"], settings["latent"],
                           hp.dropout)
    scorer = AutoencoderScorer(prep, ae, hp.architecture, settings["channels"], settings["latent"])

    def prepared(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            z, valid, _ = prep(torch.from_numpy(x))
        return z, valid

    z_train, v_train = prepared(train_x)
    z_val, v_val = prepared(val_x) if len(val_x) else (z_train, v_train)
    optimiser = torch.optim.Adam(ae.parameters(), lr=hp.learning_rate)
    epochs, batch = settings["epochs"], settings["batch_size"]
    # cosine decay to 5 % of the initial rate over the planned epochs: a lower final loss for the same time
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs, eta_min=hp.learning_rate / 20)
    generator = torch.Generator().manual_seed(hp.seed)
    best, best_state, best_epoch, stale = float("inf"), None, 0, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        ae.train()
        order = torch.randperm(len(z_train), generator=generator)
        total, batches = 0.0, 0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            optimiser.zero_grad()
            loss = masked_loss(ae(z_train[idx]), z_train[idx], v_train[idx])
            loss.backward()
            optimiser.step()
            total, batches = total + float(loss.detach()), batches + 1
        schedule.step()
        ae.eval()
        with torch.no_grad():
            val_loss = float(np.mean([float(masked_loss(ae(z_val[i:i + BATCH]), z_val[i:i + BATCH], v_val[i:i + BATCH]))
                                      for i in range(0, len(z_val), BATCH)]))
        train_loss = total / max(batches, 1)
        if not np.isfinite(train_loss):
            raise TrainingError(f"training diverged at epoch {epoch} (loss {train_loss}); lower learning_rate")
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "seconds": seconds})
        if epoch == 1 or epoch % 10 == 0 or epoch == epochs:
            log(f"epoch {epoch}/{epochs} train_loss={train_loss:.5f}; val_loss={val_loss:.5f}; {seconds:.2f}s")
        if val_loss < best - 1e-6:
            best, best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in ae.state_dict().items()}
        else:
            stale += 1
            if stale >= settings["patience"]:
                log(f"early stop at epoch {epoch}: no validation improvement for {settings['patience']} epochs")
                break
    assert best_state is not None
    ae.load_state_dict(best_state)
    scorer.eval()
    errors = []
    with torch.no_grad():
        for i in range(0, len(train_x), BATCH):
            errors.append(scorer.errors(torch.from_numpy(train_x[i:i + BATCH]))[0].numpy())
    every = np.concatenate(errors)
    scorer.error_scale.copy_(torch.tensor(typical(every)).reshape(1, -1))
    _set_tails(scorer, spec, every, log)
    return Fitted(scorer, history, best_epoch, {**settings, "best_epoch": best_epoch})
