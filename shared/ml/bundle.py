"""The model bundle manifest: one versioned document that travels with the weights.

It holds the resolved feature spec, the model family, normalisation statistics, the one calibrated
score threshold, the episode rule, metrics and lineage, so statistics and the threshold can never drift
apart from the model. Readers refuse a format version they do not know.
"""

from __future__ import annotations

import io
import json
import posixpath
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from shared.errors import BundleError
from shared.ml.episodes import EpisodeRule
from shared.ml.spec import FeatureSpec

if TYPE_CHECKING:
    import tarfile

BUNDLE_FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.pt"
EVALUATION_FILE = "evaluation.json"
# The members a model.tar.gz may hold (what the training job writes to its model directory), each with the
# most bytes it may inflate to: the registration Lambda reads the JSON ones into memory.
MAX_DOCUMENT_BYTES = 8 << 20
MAX_WEIGHTS_BYTES = 1 << 30
ARCHIVE_LIMITS = {MANIFEST_FILE: MAX_DOCUMENT_BYTES, EVALUATION_FILE: MAX_DOCUMENT_BYTES,
                  WEIGHTS_FILE: MAX_WEIGHTS_BYTES}
COPY_CHUNK = 1 << 20
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

    @property
    def turbine_offsets(self) -> dict[str, list[float]]:
        """turbine -> offsets subtracted from its features (shared.ml.levels); {} without turbine_levels."""
        return dict(self.raw["normalisation"].get("turbine_offsets") or {})

    def offsets(self, turbine_id: str) -> np.ndarray:
        """(F,) float32 offsets subtracted from this turbine's features (zeros for one the training never saw)."""
        return offsets_row(self.turbine_offsets, turbine_id, self.spec.n_features)

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
            family = raw["model"]["family"]
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{source}: malformed manifest ({exc})") from exc
        rule = _episode_rule(raw["episode_rule"], source)
        for name, arr in (("normalisation.mean", mean), ("normalisation.std", std)):
            if arr.shape != (spec.n_features,) or not np.all(np.isfinite(arr)):
                raise BundleError(f"{source}: {name} must hold {spec.n_features} finite numbers, "
                                  f"one per feature {list(spec.features)}")
        if np.any(std <= 0):
            raise BundleError(f"{source}: normalisation std must be positive")
        _check_offsets(raw["normalisation"].get("turbine_offsets"), spec, source)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold < float("inf"):
            raise BundleError(f"{source}: threshold.value must be a positive finite number, got {threshold!r}")
        if not isinstance(family, str) or not family:
            raise BundleError(f"{source}: model.family must name the model family")
        return cls(raw, spec, mean, std, float(threshold), rule)

    def to_json(self) -> str:
        return json.dumps(self.raw, indent=2, sort_keys=True)


def offsets_row(table: Mapping[str, Sequence[float]], turbine_id: str, n_features: int) -> np.ndarray:
    """(F,) float32: a turbine's offsets from a turbine_offsets table, zeros for a turbine not in it."""
    row = table.get(turbine_id)
    return np.zeros(n_features, dtype=np.float32) if row is None else np.asarray(row, dtype=np.float32)


def _check_offsets(table: Any, spec: FeatureSpec, source: str) -> None:
    if table is None:
        return
    where = f"{source}: normalisation.turbine_offsets"
    if not isinstance(table, dict):
        raise BundleError(f"{where} must map turbine ids to offsets, got {type(table).__name__}")
    for turbine, row in table.items():
        ok = (isinstance(row, list) and len(row) == spec.n_features
              and all(not isinstance(v, bool) and isinstance(v, int | float) and np.isfinite(v) for v in row))
        if not ok:
            raise BundleError(f"{where}[{turbine!r}] must hold {spec.n_features} finite numbers, one per feature")


def _episode_rule(raw: Any, source: str) -> EpisodeRule:
    if not isinstance(raw, dict):
        raise BundleError(f"{source}: episode_rule must be a JSON object, got {raw!r}")
    try:
        return EpisodeRule(**raw)
    except (TypeError, ValueError) as exc:  # the message names the field
        raise BundleError(f"{source}: malformed manifest ({exc})") from exc


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


def read_tar_documents(archive: bytes | Path, names: tuple[str, ...] = (MANIFEST_FILE, EVALUATION_FILE),
                       source: str = "model.tar.gz") -> dict[str, dict[str, Any]]:
    """JSON documents from a model.tar.gz, in memory or a file (no torch needed: Lambdas read metrics this way)."""
    buffers: dict[str, io.BytesIO] = {}

    def keep(name: str) -> BinaryIO | None:
        return buffers.setdefault(name, io.BytesIO()) if name in names else None

    with io.BytesIO(archive) if isinstance(archive, bytes) else open_archive(archive) as fileobj:
        unpack_archive(fileobj, keep, source)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in buffers:
            raise BundleError(f"{source}: {name} is missing")
        try:
            doc = json.loads(buffers[name].getvalue().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{source}: {name} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise BundleError(f"{source}: {name} is not a JSON object")
        out[name] = doc
    return out


def open_archive(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:
        raise BundleError(f"{path}: cannot open the model archive: {exc}") from exc


def unpack_archive(fileobj: BinaryIO, sink: Callable[[str], BinaryIO | None], source: str) -> None:
    """Stream a model.tar.gz's members, each copied to `sink(name)` (None: skipped).

    Only the members the training job writes are accepted (ARCHIVE_LIMITS), each a regular file within its
    size limit, counted while copying, and none twice once "./" prefixes are dropped: a reader of one copy
    and a reader of the other would otherwise see different documents. BundleError names the member."""
    import tarfile  # here: the edge detector imports this module but never reads archives

    try:
        with tarfile.open(fileobj=fileobj, mode="r:gz") as tar:
            seen: set[str] = set()
            for info in tar:
                name = _member_name(info, seen, source)
                if name is not None and (out := sink(name)) is not None:
                    _copy_member(tar, info, out, ARCHIVE_LIMITS[name], source)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{source}: not a readable model.tar.gz: {exc}") from exc


def _member_name(info: tarfile.TarInfo, seen: set[str], source: str) -> str | None:
    """The member's normalised name, None for an entry of the archive's root directory."""
    name = posixpath.normpath(info.name)
    if name in seen:
        raise BundleError(f"{source}: {name} appears more than once in the archive (again as {info.name!r})")
    seen.add(name)
    if name == "." and info.isdir():
        return None
    if name not in ARCHIVE_LIMITS:
        raise BundleError(f"{source}: unexpected member {info.name!r} (a model archive holds only "
                          f"{', '.join(ARCHIVE_LIMITS)})")
    if not info.isreg():
        raise BundleError(f"{source}: member {info.name!r} is not a regular file")
    if info.size > ARCHIVE_LIMITS[name]:
        raise BundleError(f"{source}: member {info.name!r} is larger than {_size(ARCHIVE_LIMITS[name])}")
    return name


def _copy_member(tar: tarfile.TarFile, info: tarfile.TarInfo, out: BinaryIO, limit: int, source: str) -> None:
    """Copy in chunks, counting: the header's size is not trusted to bound what is read."""
    member = tar.extractfile(info)
    if member is None:
        raise BundleError(f"{source}: member {info.name!r} is not a regular file")
    copied = 0
    with member:
        while chunk := member.read(COPY_CHUNK):
            copied += len(chunk)
            if copied > limit:
                raise BundleError(f"{source}: member {info.name!r} is larger than {_size(limit)}")
            out.write(chunk)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"
