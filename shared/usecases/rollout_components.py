"""Component versions and deployment requests of a rollout (docs/fleet.md, "Components" and "Deployments").

Component versions are immutable: the identity of a version is its artifact digests. The same version
with the same digests is reused; with other digests it is a Conflict, never an overwrite.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from shared.components import (
    DETECTOR_COMPONENT,
    MODEL_COMPONENT,
    artifact_digest,
    artifact_digests,
    component_version,
    detector_prefix,
    model_artifact_key,
    model_bundle_zip,
    model_recipe,
)
from shared.errors import ConfigurationError, Conflict, ObjectNotFound
from shared.ports import ComponentVersion, Greengrass, ObjectStore

DEPLOYMENT_POLICIES: dict[str, Any] = {
    "failureHandlingPolicy": "ROLLBACK",
    "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS", "timeoutInSeconds": 60},
    "configurationValidationPolicy": {"timeoutInSeconds": 30},
}
ROLLOUT_MAX_PER_MINUTE = 50
IOT_JOB_CONFIGURATION: dict[str, Any] = {
    "jobExecutionsRolloutConfig": {"maximumPerMinute": ROLLOUT_MAX_PER_MINUTE},
    "abortConfig": {"criteriaList": [{"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 10,
                                      "minNumberOfExecutedThings": 1}]},
    "timeoutConfig": {"inProgressTimeoutInMinutes": 10},
}


def job_configuration(max_per_minute: int = ROLLOUT_MAX_PER_MINUTE) -> dict[str, Any]:
    """IOT_JOB_CONFIGURATION with another rollout rate (AWS IoT Jobs: 1 to 1000 devices per minute)."""
    if isinstance(max_per_minute, bool) or not isinstance(max_per_minute, int) or not 1 <= max_per_minute <= 1000:
        raise ConfigurationError(f"rollout rate maximumPerMinute: an integer in [1, 1000], got {max_per_minute!r}")
    return {**IOT_JOB_CONFIGURATION, "jobExecutionsRolloutConfig": {"maximumPerMinute": max_per_minute}}


def manifest_key(group: str, version: int) -> str:
    return f"compiled/{group}/{version}/manifest.json"


def parse_manifest_key(key: str) -> tuple[str, int] | None:
    """(group, version) of compiled/<group>/<version>/manifest.json, else None."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "compiled" or parts[3] != "manifest.json" or not parts[2].isdigit():
        return None
    version = int(parts[2])
    return (parts[1], version) if version > 0 else None


def client_token(text: str) -> str:
    """Greengrass clientToken: the first 64 hex digits of sha256(text)."""
    return hashlib.sha256(text.encode()).hexdigest()[:64]


def deployment_components(version: int, detector_version: str,
                          detector_configuration: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The model and the pinned detector; the detector's configuration names the model version (it hot-swaps)
    and carries this environment's overrides of the recipe defaults (e.g. a shorter health interval)."""
    cv = component_version(version)
    merge = {**(detector_configuration or {}), "model": {"version": cv}}
    return {
        MODEL_COMPONENT: {"componentVersion": cv},
        DETECTOR_COMPONENT: {"componentVersion": detector_version,
                             "configurationUpdate": {"merge": json.dumps(merge, sort_keys=True)}},
    }


def _same_or_conflict(existing: ComponentVersion, recipe: dict[str, Any], what: str) -> ComponentVersion:
    if artifact_digests(existing.recipe) != artifact_digests(recipe):
        raise Conflict(f"{existing.name}@{existing.version} already exists with other artifacts than {what} "
                       f"(existing {artifact_digests(existing.recipe)}, new {artifact_digests(recipe)}); "
                       "component versions are immutable")
    return existing


def _create(greengrass: Greengrass, recipe: dict[str, Any], what: str) -> ComponentVersion:
    """Create the version; a concurrent creator may win, then its digests must be ours."""
    try:
        return greengrass.create_component_version(recipe)
    except Conflict:
        existing = greengrass.get_component(str(recipe["ComponentName"]), str(recipe["ComponentVersion"]))
        if existing is None:
            raise
        return _same_or_conflict(existing, recipe, what)


def ensure_model_component(store: ObjectStore, greengrass: Greengrass, group: str,
                           version: int) -> tuple[ComponentVersion, str]:
    """nacelle.model <version>.0.0 from compiled/<group>/<version>/: (component, bundle digest).

    The artifacts are checked against the manifest before anything is stored or created: S3 may deliver the
    manifest's event before the compile's other files (or while an earlier compile's are still there), and a
    version made of those would be immutable. A mismatch raises BundleError, so the event is retried."""
    prefix = f"compiled/{group}/{version}/"
    bundle = model_bundle_zip(store.get(prefix + "manifest.json"), lambda name: store.get(prefix + name))
    digest = artifact_digest(bundle)
    key = model_artifact_key(version)
    recipe = model_recipe(version, store.uri(key), digest)
    what = f"the bundle built from {store.uri(prefix + 'manifest.json')}"
    existing = greengrass.get_component(MODEL_COMPONENT, component_version(version))
    if existing is not None:
        return _same_or_conflict(existing, recipe, what), digest
    if not store.put_if_absent(key, bundle, "application/zip"):
        stored = artifact_digest(store.get(key))
        if stored != digest:
            raise Conflict(f"{store.uri(key)} already holds another bundle (digest {stored}, new {digest}); "
                           "artifacts are immutable")
    return _create(greengrass, recipe, what), digest


def ensure_detector_component(store: ObjectStore, greengrass: Greengrass, version: str) -> ComponentVersion:
    """nacelle.detector <version> from its published recipe components/nacelle.detector/<version>/recipe.json."""
    key = detector_prefix(version) + "recipe.json"
    existing = greengrass.get_component(DETECTOR_COMPONENT, version)
    try:
        recipe = json.loads(store.get(key))
    except ObjectNotFound as exc:
        if existing is not None:
            return existing
        raise ConfigurationError(f"{store.uri(key)} does not exist: publish the detector component "
                                 f"{version} first (make components)") from exc
    except ValueError as exc:
        raise ConfigurationError(f"{store.uri(key)}: not a JSON recipe: {exc}") from exc
    if recipe.get("ComponentName") != DETECTOR_COMPONENT or recipe.get("ComponentVersion") != version:
        raise ConfigurationError(f"{store.uri(key)}: ComponentName/ComponentVersion must be "
                                 f"{DETECTOR_COMPONENT}/{version}, got {recipe.get('ComponentName')}/"
                                 f"{recipe.get('ComponentVersion')}")
    if existing is not None:
        return _same_or_conflict(existing, recipe, f"{store.uri(key)} (bump VERSION)")
    return _create(greengrass, recipe, store.uri(key))
