"""The model bundle manifest: one versioned document that travels with the weights.

It holds the feature spec, normalisation statistics, per-feature thresholds, the episode rule,
metrics and lineage, so statistics and thresholds can never drift apart from the model
(seed-spec §7.2.1). Readers refuse a format version they do not know.
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

BUNDLE_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.pt"
EVALUATION_FILE = "evaluation.json"
REQUIRED_KEYS = ("format_version", "feature_spec", "architecture", "normalisation", "thresholds",
                 "episode_rule", "metrics", "lineage")


@dataclass(frozen=True)
class Manifest:
    raw: dict[str, Any]
    spec: FeatureSpec
    mean: np.ndarray
    std: np.ndarray
    thresholds: np.ndarray
    rule: EpisodeRule

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
        try:
            mean = np.asarray(raw["normalisation"]["mean"], dtype=np.float64)
            std = np.asarray(raw["normalisation"]["std"], dtype=np.float64)
            thresholds = np.asarray(raw["thresholds"]["values"], dtype=np.float64)
            rule = EpisodeRule(**raw["episode_rule"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{source}: malformed manifest ({exc})") from exc
        for name, arr in (("normalisation.mean", mean), ("normalisation.std", std),
                          ("thresholds.values", thresholds)):
            if arr.shape != (spec.n_features,) or not np.all(np.isfinite(arr)):
                raise BundleError(f"{source}: {name} must hold {spec.n_features} finite numbers, "
                                  f"one per feature {list(spec.features)}")
        if np.any(std <= 0) or np.any(thresholds <= 0):
            raise BundleError(f"{source}: normalisation std and thresholds must be positive")
        return cls(raw, spec, mean, std, thresholds, rule)

    def to_json(self) -> str:
        return json.dumps(self.raw, indent=2, sort_keys=True)


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
