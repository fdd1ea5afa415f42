"""The model families and the one scoring interface the edge runs.

Every scorer maps raw feature windows (B, F, sampled context + length), NaN where a sample is missing, to
  score (B,)            one anomaly score, compared with one calibrated threshold;
  contributions (B, F)  each feature's non-negative part of the score (which sensors explain it);
  missing (B, F)        the fraction of each feature's scored samples that are missing.
Each feature's error e_j becomes a_j = (e_j / p99_j) ** tail_j, 1 at its 99th percentile on the training
windows and TAIL_RATIO (training_jobs.fit) at its 99.9th: every feature's tail has one shape, so a steady
sensor's rare error counts as much as a gusty sensor's (tail_j = 1 on too few windows to tell);
the score is the power mean (mean of a_j**4) ** (1/4): every feature counts, the worst ones dominate,
so a fault in one sensor is not averaged away among many and one threshold still fits all of them.
The contributions are a_j**4 / F (summing to score**4); a context feature (FeatureSpec.context_features) is
conditioned on but its term is 0, so it never raises an alarm by itself.
`Preprocess` is shared: a lone bad reading (a glitch, beyond a per-feature limit the job sets on short data
only) is replaced by the median of it and its neighbours, drifting features are taken relative to their
median over the context before the scored samples, every feature is standardised, missing samples are
set to the mean; a feature that never stood still over a training window and holds one value over a scored
window is reported missing (a frozen sensor), and so is a difference feature whose hidden input (the feature
plus or minus the other feature it was taken from, e.g. a bearing's rise plus ambient) holds one value up to
float32 rounding. The exported ONNX graph holds all of it, so the device keeps
no second copy of the math.

Families:
* "pca": PCA of the flattened standardised window: the SPE/Q residual per feature, and Hotelling's T²
  as one more weighted term of the power mean; strong on small data.
* "conv1d": a 1-D convolutional autoencoder with a real bottleneck; the per-feature mean squared
  reconstruction error. "seed" is the original sample's over-complete
  2-D network, kept only for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

FAMILIES = ("pca", "conv1d")
AUTOENCODERS = ("conv1d", "seed")


class Preprocess(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor
    drift: torch.Tensor
    frozen_check: torch.Tensor
    glitch_limit: torch.Tensor
    partner: torch.Tensor
    partner_sign: torch.Tensor
    alarm: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, drift: torch.Tensor, context: int, length: int,
                 frozen_check: torch.Tensor | None = None,
                 hidden_inputs: Sequence[tuple[int, float]] | None = None,
                 alarm: Sequence[bool] | None = None) -> None:
        super().__init__()
        self.context, self.length = int(context), int(length)
        self.register_buffer("mean", _own(mean).reshape(1, -1, 1))
        self.register_buffer("std", _own(std).reshape(1, -1, 1))
        self.register_buffer("drift", _own(drift).reshape(1, -1))  # 1.0 for a drifting feature
        self.any_drift = bool((drift > 0).any())
        # 1.0 for a feature that never stood still over a training window: a window of one value is frozen
        checked = torch.zeros_like(drift) if frozen_check is None else frozen_check
        self.register_buffer("frozen_check", _own(checked).reshape(1, -1))
        # FeatureSpec.hidden_inputs; stored with the weights, so a model trained without the check keeps it off
        pairs = list(hidden_inputs) if hidden_inputs is not None else [(j, 0.0) for j in range(drift.numel())]
        self.register_buffer("partner", torch.tensor([k for k, _ in pairs], dtype=torch.long))
        self.register_buffer("partner_sign", torch.tensor([[s for _, s in pairs]], dtype=torch.float32).unsqueeze(-1))
        self.any_hidden = any(s != 0 for _, s in pairs)  # the graph holds the check only when the spec can use it
        # a sample further than this from the median of it and its two neighbours is a glitch (inf: never)
        self.register_buffer("glitch_limit", torch.full((1, int(drift.numel()), 1), math.inf))
        # 1.0 for a feature whose error counts in the score, 0.0 for a context feature: FeatureSpec.alarm_mask, so
        # built from the spec each time, never saved with the weights (the graph still holds it)
        kept = [True] * int(drift.numel()) if alarm is None else list(alarm)
        self.register_buffer("alarm", torch.tensor([kept], dtype=torch.float32), persistent=False)

    def filter_glitches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, L) with each glitch (a sample more than `glitch_limit` away from the median of it and its two
        neighbours) replaced by that median; a step, a trend or a run of bad samples passes unchanged. At
        either end the missing neighbour is the straight line through the two inward (filtered) samples."""
        if self.length < 3:
            return x
        inner = self._replace(x[..., 1:-1], x[..., :-2], x[..., 2:])
        y = torch.cat([x[..., :1], inner, x[..., -1:]], dim=-1)
        head = self._replace(x[..., :1], 2 * y[..., 1:2] - y[..., 2:3], y[..., 1:2])
        tail = self._replace(x[..., -1:], y[..., -2:-1], 2 * y[..., -2:-1] - y[..., -3:-2])
        return torch.cat([head, inner, tail], dim=-1)

    def _replace(self, x: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        median, ok = median_of_three(before, x, after)
        return torch.where(ok & ((x - median).abs() > self.glitch_limit), median, x)

    def relative(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scored samples (drifting features minus their baseline) and their missing mask.

        The baseline is the median of the context (the lower middle value: no arithmetic, the same bits in
        torch and ONNX Runtime), so a fault shorter than half the context neither shifts it nor, once
        over, leaves a false deviation behind; with no context sample, the window's own mean."""
        scored = self.filter_glitches(x[..., self.context:])
        missing = torch.isnan(scored)
        if self.any_drift:
            own, _ = _masked_mean(scored)
            if self.context:
                base, count = _masked_low_median(x[..., : self.context])
                base = torch.where(count > 0, base, own)
            else:
                base = own
            scored = scored - (self.drift * base).unsqueeze(-1)
        return scored, missing

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, F, L) standardised with missing samples at 0, valid mask (B, F, L), missing fraction (B, F):
        1 for a checked feature frozen over the window (a stuck sensor reports nothing, like a silent one)."""
        scored, missing = self.relative(x)
        valid = (~missing).float()
        z = torch.where(missing, torch.zeros_like(scored), (scored - self.mean) / self.std)
        fraction = 1.0 - valid.sum(dim=2) / self.length
        frozen = self.frozen(x[..., self.context:]) & (self.frozen_check > 0)
        return z, valid, torch.where(frozen, torch.ones_like(fraction), fraction)

    def frozen(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) of raw (B, F, L) samples: the feature, or the input a difference feature hides, stood still."""
        frozen = frozen_windows(x)
        if not self.any_hidden:
            return frozen
        other = x.index_select(1, self.partner)
        hidden = x + self.partner_sign * other
        ok = ~torch.isnan(hidden)
        highest = torch.where(ok, hidden, torch.full_like(hidden, -math.inf)).amax(dim=2)
        lowest = torch.where(ok, hidden, torch.full_like(hidden, math.inf)).amin(dim=2)
        size = torch.where(ok, x.abs() + other.abs(), torch.zeros_like(x)).amax(dim=2)
        still = (ok.sum(dim=2) >= 2) & (highest - lowest <= HIDDEN_ROUNDING * size)
        return frozen | (still & (self.partner_sign.squeeze(-1) != 0))


# float32 rounds a difference and its sum with the other input by a few 1e-8 of their size: a hidden input that
# stands still varies this little, a working sensor far more
HIDDEN_ROUNDING = 1e-6


def frozen_windows(x: torch.Tensor) -> torch.Tensor:
    """(B, F) of (B, F, L) samples: at least two values and all of them equal (NaN ignored)."""
    ok = ~torch.isnan(x)
    highest = torch.where(ok, x, torch.full_like(x, -math.inf)).amax(dim=2)
    lowest = torch.where(ok, x, torch.full_like(x, math.inf)).amin(dim=2)
    return (ok.sum(dim=2) >= 2) & (highest == lowest)


def median_of_three(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise median of three, and where all three are present. NaN is zeroed first so that no min/max
    sees one (torch and ONNX Runtime treat it differently)."""
    ok = ~(torch.isnan(a) | torch.isnan(b) | torch.isnan(c))
    a, b, c = (torch.where(ok, v, torch.zeros_like(v)) for v in (a, b, c))
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c)), ok


def _own(values: torch.Tensor) -> torch.Tensor:
    """A float32 copy: buffers must never share memory (load_state_dict writes into them in place)."""
    return values.detach().to(torch.float32).contiguous().clone()


def _masked_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ok = ~torch.isnan(x)
    count = ok.float().sum(dim=2)
    total = torch.where(ok, x, torch.zeros_like(x)).sum(dim=2)
    return total / count.clamp(min=1.0), count


def _masked_low_median(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of (B, F, C): the ((count - 1) // 2)-th smallest non-NaN value, and the count."""
    ok = ~torch.isnan(x)
    count = ok.float().sum(dim=2)
    ordered, _ = torch.sort(torch.where(ok, x, torch.full_like(x, float("inf"))), dim=2)
    index = torch.div((count - 1.0).clamp(min=0.0), 2.0, rounding_mode="floor").long().unsqueeze(-1)
    return torch.gather(ordered, 2, index).squeeze(-1), count


def _per_feature_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return (values * valid).sum(dim=2) / valid.sum(dim=2).clamp(min=1.0)


POWER = 4.0  # of the power mean that combines the features' errors into the score


def _combine(errors: torch.Tensor, scale: torch.Tensor, tail: torch.Tensor, alarm: torch.Tensor,
             extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, contributions) from per-feature errors (B, F), their scales, tail powers and alarm weights
    (1, F: 0 leaves a context feature's error out), and an optional extra term (B,)."""
    ratios = (errors / scale).pow(tail)
    contributions = alarm * ratios.pow(POWER) / ratios.shape[1]
    total = contributions.sum(dim=1)
    if extra is not None:
        total = total + extra
    return total.pow(1.0 / POWER), contributions


class PCAScorer(nn.Module):
    family = "pca"
    center: torch.Tensor
    components: torch.Tensor
    inv_variance: torch.Tensor
    q_scale: torch.Tensor
    tail_power: torch.Tensor
    t2_scale: torch.Tensor
    t2_weight: torch.Tensor

    def __init__(self, prep: Preprocess, center: torch.Tensor, components: torch.Tensor, variance: torch.Tensor,
                 q_scale: torch.Tensor, t2_scale: float, t2_weight: float) -> None:
        super().__init__()
        self.prep = prep
        self.register_buffer("center", _own(center).reshape(1, -1))
        self.register_buffer("components", _own(components))  # (F*L, k)
        self.register_buffer("inv_variance", _own(1.0 / variance.clamp(min=1e-12)).reshape(1, -1))
        self.register_buffer("q_scale", _own(q_scale).reshape(1, -1))
        self.register_buffer("tail_power", torch.ones(1, q_scale.numel()))
        self.register_buffer("t2_scale", torch.tensor(float(t2_scale)))
        self.register_buffer("t2_weight", torch.tensor(float(t2_weight)))

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-feature Q (B, F), T² (B,) and missing fraction (B, F), before normalisation."""
        z, valid, missing = self.prep(x)
        flat = z.flatten(1) - self.center
        t = flat @ self.components
        residual = (flat - t @ self.components.T).reshape(z.shape)
        q = _per_feature_mean(residual * residual, valid)
        t2 = (t * t * self.inv_variance).sum(dim=1)
        return q, t2, missing

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, t2, missing = self.parts(x)
        t2_term = self.t2_weight * (t2 / self.t2_scale).pow(POWER) / q.shape[1]
        score, contributions = _combine(q, self.q_scale, self.tail_power, self.prep.alarm, t2_term)
        return score, contributions, missing

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "components": int(self.components.shape[1]),
                "t2_weight": float(self.t2_weight)}


class AutoencoderScorer(nn.Module):
    error_scale: torch.Tensor
    tail_power: torch.Tensor

    def __init__(self, prep: Preprocess, autoencoder: nn.Module, architecture: str, channels: int, latent: int,
                 error_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.prep = prep
        self.autoencoder = autoencoder
        self.family = architecture
        self.channels, self.latent = int(channels), int(latent)
        n = int(prep.mean.shape[1])
        self.register_buffer("error_scale", _own(torch.ones(n) if error_scale is None else error_scale).reshape(1, -1))
        self.register_buffer("tail_power", torch.ones(1, n))

    def errors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature mean squared reconstruction error (B, F) and missing fraction (B, F)."""
        z, valid, missing = self.prep(x)
        diff = self.autoencoder(z) - z
        return _per_feature_mean(diff * diff, valid), missing

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        errors, missing = self.errors(x)
        score, contributions = _combine(errors, self.error_scale, self.tail_power, self.prep.alarm)
        return score, contributions, missing

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "channels": self.channels, "latent": self.latent}


class ConvAutoencoder(nn.Module):
    """Two stride-2 convolutions, a linear bottleneck of `latent` numbers, and back."""

    def __init__(self, n_features: int, length: int, channels: int = 32, latent: int = 32,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.length = length
        self.reduced = math.ceil(length / 4)
        self.channels = channels
        self.encoder = nn.Sequential(
            nn.Conv1d(n_features, channels, 5, stride=2, padding=2), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv1d(channels, channels, 5, stride=2, padding=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(channels * self.reduced, latent),
        )
        self.expand = nn.Linear(latent, channels * self.reduced)
        self.decoder = nn.Sequential(
            nn.ReLU(), nn.Dropout(dropout),
            nn.ConvTranspose1d(channels, channels, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose1d(channels, n_features, 4, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.expand(self.encoder(x)).view(-1, self.channels, self.reduced)
        return self.decoder(z)[..., : self.length]


class SeedAutoencoder(nn.Module):
    """The original sample's network: (B, F, 100) viewed as (B, F, 10, 10), 2x2 kernels, no bottleneck."""

    def __init__(self, n_features: int, length: int, dropout: float = 0.0) -> None:
        super().__init__()
        if length != 100:
            raise ValueError("the seed architecture needs windows of exactly 100 samples")
        self.net = nn.Sequential(
            nn.Conv2d(n_features, 32, 2, padding=1), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv2d(32, 64, 2, padding=1), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv2d(64, 128, 2, padding=2), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 2, padding=2), nn.ReLU(), nn.Dropout(dropout),
            nn.ConvTranspose2d(64, 32, 2, padding=1), nn.ReLU(), nn.Dropout(dropout),
            nn.ConvTranspose2d(32, n_features, 2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, length = x.shape
        return self.net(x.reshape(b, f, 10, 10)).reshape(b, f, length)


def build_autoencoder(architecture: str, n_features: int, length: int, channels: int = 32,
                      latent: int = 32, dropout: float = 0.0) -> nn.Module:
    if architecture == "conv1d":
        return ConvAutoencoder(n_features, length, channels, latent, dropout)
    if architecture == "seed":
        return SeedAutoencoder(n_features, length, dropout)
    raise ValueError(f"unknown architecture {architecture!r}; choose one of {AUTOENCODERS}")


def masked_loss(reconstruction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the samples that were present."""
    diff = (reconstruction - target) * valid
    return diff.pow(2).sum() / valid.sum().clamp(min=1.0)


Scorer = PCAScorer | AutoencoderScorer


def feature_settings(scorer: Scorer, names: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
    """Per feature, what the score does with it after normalising: the power its error's tail is raised
    to, and the glitch limit (None: no glitch filter)."""
    powers = scorer.tail_power.flatten().tolist()
    limits = scorer.prep.glitch_limit.flatten().tolist()
    return {name: {"tail_power": power, "glitch_limit": limit if math.isfinite(limit) else None}
            for name, power, limit in zip(names, powers, limits, strict=True)}


def empty_scorer(description: dict[str, Any], drift: tuple[bool, ...], context: int, length: int,
                 hidden_inputs: Sequence[tuple[int, float]] | None = None,
                 alarm: Sequence[bool] | None = None) -> Scorer:
    """A scorer of the described shape with placeholder values, ready for load_state_dict."""
    n_features = len(drift)
    ones = torch.ones(n_features)
    prep = Preprocess(torch.zeros(n_features), ones, torch.tensor(drift, dtype=torch.float32), context, length,
                      hidden_inputs=hidden_inputs, alarm=alarm)
    family = description.get("family")
    if family == "pca":
        k, d = int(description["components"]), n_features * length
        return PCAScorer(prep, torch.zeros(d), torch.zeros(d, k), torch.ones(k), ones, 1.0, 0.0)
    if family in AUTOENCODERS:
        channels, latent = int(description.get("channels", 32)), int(description.get("latent", 32))
        return AutoencoderScorer(prep, build_autoencoder(str(family), n_features, length, channels, latent),
                                 str(family), channels, latent)
    raise ValueError(f"unknown model family {family!r}; known: {(*FAMILIES, 'seed')}")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` inside the block, as they were after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
