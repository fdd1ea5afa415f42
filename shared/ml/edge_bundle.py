"""The edge bundle: `model.onnx` plus `manifest.json` (the training manifest with an `edge` section).

Read on devices and in Lambdas, so numpy and the standard library only (no onnxruntime here).
`verify` is what a device runs before loading a bundle: it refuses unknown format versions, a
failed equivalence check, and any artifact whose size or sha256 differs from the manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import BundleError
from shared.ml.bundle import MANIFEST_FILE, Manifest

EDGE_FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Artifact:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class EdgeManifest:
    raw: dict[str, Any]
    bundle: Manifest  # the training manifest (spec, normalisation, thresholds, rule, lineage)
    artifacts: dict[str, Artifact]
    model_version: int | None

    @property
    def edge(self) -> dict[str, Any]:
        return dict(self.raw["edge"])

    @property
    def model_file(self) -> str:
        return MODEL_FILE

    @property
    def input_name(self) -> str:
        return str(next(iter(self.raw["edge"]["onnx"]["inputs"])))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = MANIFEST_FILE) -> EdgeManifest:
        bundle = Manifest.from_dict(raw, source)  # refuses an unknown bundle format version
        edge = raw.get("edge")
        if not isinstance(edge, dict):
            raise BundleError(f"{source}: no edge section (not a compiled bundle)")
        version = edge.get("format_version")
        if version != EDGE_FORMAT_VERSION:
            raise BundleError(f"{source}: edge format version {version!r} is not supported "
                              f"(this code reads version {EDGE_FORMAT_VERSION})")
        onnx_info = edge.get("onnx")
        if not (isinstance(onnx_info, dict) and isinstance(onnx_info.get("inputs"), dict)
                and len(onnx_info["inputs"]) == 1 and isinstance(onnx_info.get("outputs"), dict)):
            raise BundleError(f"{source}: edge.onnx must describe one input and the outputs")
        equivalence = edge.get("equivalence")
        if not isinstance(equivalence, dict) or equivalence.get("passed") is not True:
            raise BundleError(f"{source}: the bundle did not pass the ONNX/PyTorch equivalence check")
        artifacts = _artifacts(edge.get("artifacts"), source)
        model_version = raw.get("model_version")
        if model_version is not None and (isinstance(model_version, bool) or not isinstance(model_version, int)):
            raise BundleError(f"{source}: model_version must be an integer, got {model_version!r}")
        return cls(raw, bundle, artifacts, model_version)

    @classmethod
    def read(cls, directory: Path) -> EdgeManifest:
        path = directory / MANIFEST_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{path}: cannot read the edge manifest: {exc}") from exc
        return cls.from_dict(raw, str(path))

    def to_json(self) -> str:
        return json.dumps(self.raw, indent=2, sort_keys=True)


def _artifacts(raw: Any, source: str) -> dict[str, Artifact]:
    if not isinstance(raw, dict) or MODEL_FILE not in raw:
        raise BundleError(f"{source}: edge.artifacts must list {MODEL_FILE}")
    out = {}
    for name, entry in raw.items():
        # Plain file names only: a manifest must not point outside its own directory.
        if (not isinstance(name, str) or name in ("", ".", "..", MANIFEST_FILE) or "/" in name
                or "\\" in name):
            raise BundleError(f"{source}: artifact name {name!r} is not a plain file name")
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        size = entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise BundleError(f"{source}: artifact {name}: sha256 must be 64 lowercase hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BundleError(f"{source}: artifact {name}: size must be a non-negative integer")
        out[name] = Artifact(name, digest, size)
    return out


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify(directory: Path) -> EdgeManifest:
    """The manifest, after checking every artifact's size and sha256 against the files."""
    manifest = EdgeManifest.read(directory)
    for artifact in manifest.artifacts.values():
        path = directory / artifact.name
        if not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing")
        size, digest = path.stat().st_size, sha256_file(path)
        if digest != artifact.sha256 or size != artifact.size:
            raise BundleError(f"{path}: sha256 {digest} ({size} bytes) does not match the manifest's "
                              f"{artifact.sha256} ({artifact.size} bytes)")
    return manifest
