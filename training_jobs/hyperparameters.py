"""Typed hyperparameters with the defaults the product ships."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from shared.errors import ConfigurationError
from shared.ml.episodes import EpisodeRule


@dataclass(frozen=True)
class Hyperparameters:
    architecture: str = "conv1d"
    channels: int = 32
    latent: int = 32
    dropout: float = 0.0
    epochs: int = 40
    batch_size: int = 256
    learning_rate: float = 3e-3
    patience: int = 5  # stop after this many epochs without validation improvement
    train_stride: int = 0  # 0: the spec's stride
    max_train_windows: int = 40_000  # evenly subsampled beyond this, to bound training time
    val_fraction: float = 0.15
    test_fraction: float = 0.15  # the in-job evaluation the quality gate reads
    label_margin_s: float = 60.0  # windows this close to a labelled fault never count as normal
    threshold_quantile: float = 0.999
    threshold_margin: float = 1.4  # threshold = quantile x margin (headroom above the normal tail)
    k: int = 16  # open: >= k flagged of the last n windows (8 s of 10 s at the default stride)
    n: int = 20
    m: int = 20  # close: m consecutive clean windows
    missing_tolerance: float = 0.2
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0: torch's default
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

    def check(self) -> None:
        if not 0 < self.threshold_quantile < 1:
            raise ConfigurationError("threshold_quantile must lie in (0, 1)")
        if self.val_fraction <= 0 or self.test_fraction <= 0 or self.val_fraction + self.test_fraction >= 0.8:
            raise ConfigurationError("val_fraction and test_fraction must be > 0 and leave >= 20 % for training")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigurationError("epochs, batch_size and learning_rate must be positive")
        try:
            self.rule()
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc

    def rule(self) -> EpisodeRule:
        return EpisodeRule(k=self.k, n=self.n, m=self.m, missing_tolerance=self.missing_tolerance)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
