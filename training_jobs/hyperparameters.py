"""Typed hyperparameters with the defaults the product ships.

0 (or a negative margin) means "sized from the data": see training_jobs.fit.autoencoder_settings and
training_jobs.train. Timescales (windows, episode rule, detection tolerance) belong to the feature spec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from shared.errors import ConfigurationError
from training_jobs.model import AUTOENCODERS, FAMILIES


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
        typed: dict[str, Any] = {}
        for key, value in raw.items():
            kind = {"int": int, "float": float, "str": str}[str(known[key].type)]
            try:
                typed[key] = kind(value)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"hyperparameter {key}={value!r} is not a valid {kind.__name__}") from exc
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
        if self.val_fraction <= 0 or self.test_fraction <= 0 or self.val_fraction + self.test_fraction >= 0.8:
            raise ConfigurationError("val_fraction and test_fraction must be > 0 and leave >= 20 % for training")
        if min(self.epochs, self.batch_size, self.patience) < 0 or self.learning_rate <= 0 or self.train_steps < 1:
            raise ConfigurationError("epochs, batch_size and patience must be >= 0 (0: from the data); "
                                     "learning_rate and train_steps > 0")
        if not 0 < self.pca_variance < 1 or self.pca_t2_weight < 0:
            raise ConfigurationError("pca_variance must lie in (0, 1) and pca_t2_weight be >= 0")
        if self.folds < 2 or self.min_samples < 2:
            raise ConfigurationError("folds must be >= 2 and min_samples >= 2")
        if not self.target_false_alarms_per_day > 0 or self.threshold_margin < 0:
            raise ConfigurationError("target_false_alarms_per_day must be > 0 and threshold_margin >= 0 "
                                     "(0: from the data)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
