"""Greengrass component names, object keys, digests and the model component's recipe (docs/fleet.md).

Standard library only: used by the compilation Lambda, the local stack and the detector build step.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import BundleError

MODEL_COMPONENT = "nacelle.model"
DETECTOR_COMPONENT = "nacelle.detector"
SENSORS_COMPONENT = "nacelle.sensors"  # deployed by operators per device (docs/sensors.md), not by the rollout
RECIPE_FORMAT = "2020-01-25"
MANIFEST_FILE = "manifest.json"
BUNDLE_ZIP = "bundle.zip"
COMPONENTS_PREFIX = "components/"

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest timestamp a zip entry can hold
_FILE_MODE = 0o644 << 16

# Model component Install: every file digest of bundle/manifest.json, stdlib python3 only (no venv yet).
_VERIFY_BUNDLE = (
    "import hashlib,json,pathlib,sys;d=pathlib.Path(sys.argv[1]);"
    "a=json.loads((d/'manifest.json').read_text())['edge']['artifacts'];"
    "bad=[n for n,e in sorted(a.items()) if hashlib.sha256((d/n).read_bytes()).hexdigest()!=e['sha256']];"
    "sys.exit('bundle digest mismatch: '+', '.join(bad) if bad else 0)"
)

__all__ = [
    "DETECTOR_COMPONENT", "MODEL_COMPONENT", "SENSORS_COMPONENT", "artifact_digest", "artifact_digests",
    "component_prefix", "component_version", "detector_prefix", "deterministic_zip", "model_artifact_key",
    "model_bundle_zip", "model_recipe",
]


def component_version(model_version: int) -> str:
    """The model component's semantic version: model package version 7 -> "7.0.0"."""
    if isinstance(model_version, bool) or not isinstance(model_version, int) or model_version < 1:
        raise ValueError(f"model version must be a positive integer, got {model_version!r}")
    return f"{model_version}.0.0"


def model_artifact_key(model_version: int) -> str:
    return f"{COMPONENTS_PREFIX}{MODEL_COMPONENT}/{component_version(model_version)}/{BUNDLE_ZIP}"


def detector_prefix(version: str) -> str:
    return component_prefix(DETECTOR_COMPONENT, version)


def component_prefix(name: str, version: str) -> str:
    """components/<name>/<version>/: where a component's recipe and artifacts are published."""
    if not version or "/" in version:
        raise ValueError(f"invalid {name} component version {version!r}")
    return f"{COMPONENTS_PREFIX}{name}/{version}/"


def artifact_digest(data: bytes) -> str:
    """Greengrass artifact digest: base64 of the SHA-256 of the bytes."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def deterministic_zip(entries: Mapping[str, bytes]) -> bytes:
    """A zip whose bytes depend only on the entries: sorted names, fixed timestamps and modes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = _FILE_MODE
            info.create_system = 3  # unix, whatever the build host
            zf.writestr(info, entries[name], compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buffer.getvalue()


def model_bundle_zip(manifest: bytes, read: Callable[[str], bytes]) -> bytes:
    """bundle.zip of a compiled model: the manifest (without a `neo` section, which manifests of earlier
    releases carried; Neo's result now goes to neo.json beside it) plus every artifact the manifest lists,
    read by name. Each artifact must have the manifest's sha256 and size, else BundleError: the compile's files
    land in S3 in no set order, so what `read` returns may still be another compile's (retry later)."""
    try:
        raw = json.loads(manifest)
        artifacts = raw["edge"]["artifacts"]
    except (ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"{MANIFEST_FILE}: not an edge manifest with edge.artifacts ({exc!r})") from exc
    if not isinstance(artifacts, dict) or not artifacts:
        raise BundleError(f"{MANIFEST_FILE}: edge.artifacts must list the bundle's files")
    raw.pop("neo", None)
    entries = {MANIFEST_FILE: json.dumps(raw, indent=2, sort_keys=True).encode()}
    for name in artifacts:
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..",
                                                                                         MANIFEST_FILE):
            raise BundleError(f"{MANIFEST_FILE}: artifact name {name!r} is not a plain file name")
        entries[name] = _checked(name, artifacts[name], read(name))
    return deterministic_zip(entries)


def _checked(name: str, entry: Any, data: bytes) -> bytes:
    """`data` if it is the artifact the manifest entry describes (sha256 and size)."""
    want = (entry.get("sha256"), entry.get("size")) if isinstance(entry, dict) else (None, None)
    got = (hashlib.sha256(data).hexdigest(), len(data))
    if got != want:
        raise BundleError(f"{MANIFEST_FILE}: artifact {name} is {got[1]} bytes with sha256 {got[0]}; the manifest "
                          f"lists {want[1]} bytes with sha256 {want[0]} (not uploaded yet, or another compile's)")
    return data


def model_recipe(model_version: int, bundle_uri: str, bundle_digest: str) -> dict[str, Any]:
    """The nacelle.model recipe: one unarchived bundle.zip whose files are verified on install."""
    version = component_version(model_version)
    return {
        "RecipeFormatVersion": RECIPE_FORMAT,
        "ComponentName": MODEL_COMPONENT,
        "ComponentVersion": version,
        "ComponentDescription": f"Nacelle anomaly model {model_version}: ONNX graph and manifest (edge bundle).",
        "ComponentPublisher": "Nacelle",
        "Manifests": [{
            "Platform": {"os": "linux"},
            "Artifacts": [{"Uri": bundle_uri, "Unarchive": "ZIP", "Digest": bundle_digest,
                           "Algorithm": "SHA-256"}],
            "Lifecycle": {"Install": {
                "Script": f"python3 -c \"{_VERIFY_BUNDLE}\" '{{artifacts:decompressedPath}}/bundle'",
                "RequiresPrivilege": False, "Timeout": 120}},
        }],
    }


def artifact_digests(recipe: Mapping[str, Any]) -> dict[str, str]:
    """{artifact URI: digest} over every manifest of a recipe: what identity comparisons use."""
    out: dict[str, str] = {}
    for manifest in recipe.get("Manifests") or []:
        for artifact in manifest.get("Artifacts") or []:
            out[str(artifact["Uri"])] = str(artifact.get("Digest", ""))
    return out
