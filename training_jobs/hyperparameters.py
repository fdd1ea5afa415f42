"""Typed hyperparameters with the defaults the product ships.

0 (or a negative margin) means "sized from the data": see training_jobs.fit.autoencoder_settings and
training_jobs.train. Timescales (windows, episode rule, detection tolerance) belong to the feature spec.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from shared.errors import ConfigurationError
from training_jobs.model import AUTOENCODERS, FAMILIES


@dataclass(frozen=True)
class Range:
    """The values a numeric hyperparameter may take: low..high, each end included unless open."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        low = "(-inf" if self.low == -math.inf else f"{'(' if self.low_open else '['}{_plain(self.low)}"
        return f"{low}, {_plain(self.high)}{')' if self.high_open else ']'}"


def _plain(x: float) -> str:
    """4294967295, not 4.29497e+09."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


MAX_SEED = 2**32 - 1  # seeds must be non-negative (numpy); 32 bits are plenty
# Upper bounds keep a mistyped value (epochs=1e9) from running a job for days or exhausting memory.
RANGES: dict[str, Range] = {
    "channels": Range(1, 1024),
    "latent": Range(1, 1024),
    "dropout": Range(0, 1, high_open=True),
    "epochs": Range(0, 10_000),
    "batch_size": Range(0, 65_536),
    "train_steps": Range(1, 1_000_000),
    "learning_rate": Range(0, 1, low_open=True),
    "patience": Range(0, 10_000),
    "pca_variance": Range(0, 1, low_open=True, high_open=True),
    "pca_t2_weight": Range(0, 100),
    "train_stride": Range(0, 1_000_000),
    "max_train_windows": Range(1, 1_000_000),
    "val_fraction": Range(0, 0.8, low_open=True, high_open=True),
    "test_fraction": Range(0, 0.8, low_open=True, high_open=True),
    "folds": Range(2, 50),
    "fold_below_samples": Range(0, 1e12),
    "min_samples": Range(2, 1e12),
    "label_margin_s": Range(-math.inf, 86_400),  # < 0: the spec's detection tolerance
    "target_false_alarms_per_day": Range(0, 100, low_open=True),
    "threshold_margin": Range(0, 100),
    "seed": Range(0, MAX_SEED),
    "threads": Range(0, 1024),
    "injection_seed": Range(0, MAX_SEED),
}
_WHOLE = re.compile(r"[+-]?\d+")


def _typed(key: str, kind: str, value: Any) -> Any:
    """`value` as the field's type. SageMaker passes strings (training_jobs.contract unquotes JSON strings only):
    "2.9" or "true" for a count, "NaN" or "Infinity" for a float are refused, not truncated or carried into the
    bundle."""
    if kind == "str":
        return str(value)
    allowed = RANGES[key]
    if kind == "int":
        number = _whole(value)
        if number is None:
            raise ConfigurationError(f"hyperparameter {key}={value!r} must be a whole number in {allowed}")
        return number
    real = _real(value)
    if real is None:
        raise ConfigurationError(f"hyperparameter {key}={value!r} must be a finite number in {allowed}")
    return real


def _whole(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():  # 3.0 from a JSON writer
        return int(value)
    if isinstance(value, str) and _WHOLE.fullmatch(value.strip()):
        return int(value)
    return None


def _real(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Hyperparameters:
    families: str = "auto"  # candidates, comma-separated ("pca,conv1d"); "auto": all of them
    architecture: str = "conv1d"  # the autoencoder's network ("seed": the original over-complete one)
    channels: int = 32
    latent: int = 32  # at most a quarter of the window's numbers
    dropout: float = 0.0
    epochs: int = 0  # 0: enough for about train_steps updates (10..200)
    batch_size: int = 0  # 0: windows / 8 (16..256)
    train_steps: int = 3000
    learning_rate: float = 3e-3
    patience: int = 0  # epochs without validation improvement before stopping; 0: a twentieth of the epochs (>= 5)
    pca_variance: float = 0.7  # share of the standardised windows' variance the components keep
    pca_t2_weight: float = 1.0  # weight of Hotelling's T² (one more term of the power mean) next to the Q residuals
    train_stride: int = 0  # 0: the spec's stride (1 sample when folds are used)
    max_train_windows: int = 40_000  # evenly subsampled beyond this, to bound training time
    val_fraction: float = 0.15
    test_fraction: float = 0.15  # the in-job evaluation the quality gate reads
    folds: int = 5  # blocked time-series folds when the data is short
    fold_below_samples: int = 20_000  # usable samples below which folds replace the fixed slices
    min_samples: int = 300  # usable samples below which training refuses
    label_margin_s: float = -1.0  # windows this close to a labelled fault never count as normal; < 0: the
    #                               spec's detection tolerance
    target_false_alarms_per_day: float = 0.02  # per turbine: one a day across a 50-turbine farm
    threshold_margin: float = 0.0  # x the calibrated threshold; 0: selection.SHORT_DATA_MARGIN on folds, else 1
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0: torch's default (local jobs: the cores the job may use)
    dataset_hash: str = ""  # lineage, set by the chain (sha256 of the dataset manifest)
    injection_seed: int = 1234

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> Hyperparameters:
        known = {f.name: f for f in fields(cls)}
        # script mode adds its own keys (sagemaker_program, sagemaker_submit_directory, ...)
        raw = {k: v for k, v in raw.items() if not k.startswith("sagemaker_")}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigurationError(f"unknown hyperparameter(s) {unknown}; known: {sorted(known)}")
        typed = {key: _typed(key, str(known[key].type), value) for key, value in raw.items()}
        hp = cls(**typed)
        hp.check()
        return hp

    @property
    def candidates(self) -> tuple[str, ...]:
        if self.families == "auto":
            return FAMILIES
        return tuple(f.strip() for f in self.families.split(",") if f.strip())

    def check(self) -> None:
        bad = [f for f in self.candidates if f not in FAMILIES]
        if bad or not self.candidates:
            raise ConfigurationError(f"families must be \"auto\" or a comma-separated subset of {FAMILIES}, "
                                     f"got {self.families!r}")
        if self.architecture not in AUTOENCODERS:
            raise ConfigurationError(f"architecture must be one of {AUTOENCODERS}, got {self.architecture!r}")
        for key, allowed in RANGES.items():
            value = getattr(self, key)
            if not allowed.holds(value):
                raise ConfigurationError(f"hyperparameter {key}={value!r} must lie in {allowed}")
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ConfigurationError("val_fraction and test_fraction must be > 0 and leave >= 20 % for training")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
