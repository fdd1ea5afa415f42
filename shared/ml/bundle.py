"""The model bundle manifest: one versioned document that travels with the weights.

It holds the resolved feature spec, the model family, normalisation statistics, the one calibrated
score threshold, the episode rule, metrics and lineage, so statistics and the threshold can never drift
apart from the model. Readers refuse a format version they do not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import BundleError
from shared.ml.episodes import EpisodeRule
from shared.ml.spec import FeatureSpec

BUNDLE_FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.pt"
EVALUATION_FILE = "evaluation.json"
REQUIRED_KEYS = ("format_version", "feature_spec", "model", "normalisation", "threshold",
                 "episode_rule", "metrics", "lineage")


@dataclass(frozen=True)
class Manifest:
    raw: dict[str, Any]
    spec: FeatureSpec
    mean: np.ndarray
    std: np.ndarray
    threshold: float  # on the model's one anomaly score
    rule: EpisodeRule

    @property
    def family(self) -> str:
        return str(self.raw["model"]["family"])

    @property
    def lineage(self) -> dict[str, Any]:
        return dict(self.raw["lineage"])

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.raw["metrics"])

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = MANIFEST_FILE) -> Manifest:
        if not isinstance(raw, dict):
            raise BundleError(f"{source}: manifest is not a JSON object")
        version = raw.get("format_version")
        if version != BUNDLE_FORMAT_VERSION:
            raise BundleError(f"{source}: bundle format version {version!r} is not supported "
                              f"(this code reads version {BUNDLE_FORMAT_VERSION})")
        missing = [k for k in REQUIRED_KEYS if k not in raw]
        if missing:
            raise BundleError(f"{source}: manifest lacks {missing}")
        spec = FeatureSpec.from_dict(raw["feature_spec"], f"{source}: feature_spec")
        if spec.drift.features is None:
            raise BundleError(f"{source}: feature_spec.drift.features is still \"auto\" (a model names them)")
        try:
            mean = np.asarray(raw["normalisation"]["mean"], dtype=np.float64)
            std = np.asarray(raw["normalisation"]["std"], dtype=np.float64)
            threshold = raw["threshold"]["value"]
            rule = EpisodeRule(**raw["episode_rule"])
            family = raw["model"]["family"]
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{source}: malformed manifest ({exc})") from exc
        for name, arr in (("normalisation.mean", mean), ("normalisation.std", std)):
            if arr.shape != (spec.n_features,) or not np.all(np.isfinite(arr)):
                raise BundleError(f"{source}: {name} must hold {spec.n_features} finite numbers, "
                                  f"one per feature {list(spec.features)}")
        if np.any(std <= 0):
            raise BundleError(f"{source}: normalisation std must be positive")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold < float("inf"):
            raise BundleError(f"{source}: threshold.value must be a positive finite number, got {threshold!r}")
        if not isinstance(family, str) or not family:
            raise BundleError(f"{source}: model.family must name the model family")
        return cls(raw, spec, mean, std, float(threshold), rule)

    def to_json(self) -> str:
        return json.dumps(self.raw, indent=2, sort_keys=True)


def input_shape(manifest: dict[str, Any]) -> tuple[int, ...]:
    """(1, features, samples) the model's graph reads, from a manifest document (registry metadata, Neo)."""
    inputs: dict[str, list[Any]] = (manifest.get("model") or {}).get("inputs") or {}
    shape: list[Any] = next(iter(inputs.values()), ["batch", 0, 0])
    return (1, *(int(x) for x in shape[1:]))


def read_manifest(model_dir: Path) -> Manifest:
    path = model_dir / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: cannot read the bundle manifest: {exc}") from exc
    return Manifest.from_dict(raw, str(path))


def read_tar_documents(archive: bytes, names: tuple[str, ...] = (MANIFEST_FILE, EVALUATION_FILE),
                       source: str = "model.tar.gz") -> dict[str, dict[str, Any]]:
    """JSON documents from a model.tar.gz held in memory (no torch needed: Lambdas read metrics this way)."""
    import io
    import tarfile

    out: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for name in names:
                member = tar.extractfile(name)
                if member is None:
                    raise BundleError(f"{source}: {name} is not a file")
                out[name] = json.loads(member.read().decode("utf-8"))
    except KeyError as exc:
        raise BundleError(f"{source}: {exc.args[0] if exc.args else 'a document'} is missing") from exc
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{source}: unreadable model archive: {exc}") from exc
    return out
