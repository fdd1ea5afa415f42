"""Greengrass v2 recipe semantics for the simulated core device: pure functions, no I/O.

* `select_manifest`: the first manifest whose `Platform` matches this device (os linux, its architecture).
* `resolve`: the deployment's components plus their `ComponentDependencies` (VersionRequirement, HARD/SOFT).
* `effective_configuration`: the recipe's `DefaultConfiguration` (or the component's current configuration on
  the device), then the deployment's `configurationUpdate` (`reset` JSON pointers first, then `merge`).
* `interpolate`: recipe variables in lifecycle scripts and environment values.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import ConfigurationError

__all__ = [
    "Artifact", "Dependency", "DevicePaths", "RecipeError", "ResolutionError", "ResolvedComponent",
    "artifact_digest", "artifacts", "dependencies", "device_platform", "effective_configuration", "interpolate",
    "interpolated_lifecycle", "lifecycle", "matches", "resolve", "select_manifest", "start_order",
]

LIFECYCLE_STEPS = ("Setenv", "Install", "Startup", "Run", "Shutdown")
# AWS-provided components a recipe may depend on that the local stack provides itself, with the version it stands
# in for: the token exchange service's role (AWS credentials for the device's own data) is played by the stack's
# capture gateway (nacelle/local/edge/capture_gateway.py).
PLATFORM_COMPONENTS = {"aws.greengrass.TokenExchangeService": "2.0.3"}


class RecipeError(ConfigurationError):
    """A recipe or a deployment document cannot be applied (the message names the component and field)."""


class ResolutionError(RecipeError):
    """No component version satisfies the deployment and the recipes' dependency requirements."""


# -- platform and manifests --------------------------------------------------------------------------------------
def device_platform() -> dict[str, str]:
    """This machine as Greengrass names it (`os`, `architecture`)."""
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "aarch64", "arm64": "aarch64",
            "armv7l": "arm", "i686": "x86"}.get(platform.machine().lower(), platform.machine().lower())
    return {"os": "linux", "architecture": arch}


def _platform_value_matches(wanted: Any, actual: str) -> bool:
    if not isinstance(wanted, str) or wanted in ("", "*"):
        return True
    if len(wanted) > 1 and wanted.startswith("/") and wanted.endswith("/"):  # a regex, like the nucleus
        return re.fullmatch(wanted[1:-1], actual) is not None
    return wanted.lower() == actual.lower()


def select_manifest(recipe: Mapping[str, Any], device: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The first manifest matching the device; a recipe without manifests is one empty manifest."""
    device = device or device_platform()
    name = recipe.get("ComponentName", "?")
    manifests = recipe.get("Manifests")
    if manifests is None:
        return {}
    if not isinstance(manifests, list):
        raise RecipeError(f"recipe {name}: Manifests must be a list")
    for manifest in manifests:
        if not isinstance(manifest, Mapping):
            raise RecipeError(f"recipe {name}: every manifest must be a mapping")
        wanted = manifest.get("Platform") or {}
        if all(_platform_value_matches(v, device.get(k, "")) for k, v in wanted.items()):
            return dict(manifest)
    raise RecipeError(f"recipe {name}: no manifest matches this device's platform {dict(device)}")


def lifecycle(recipe: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's Lifecycle, else the recipe-level one; steps as {Script, Timeout?, ...} mappings."""
    raw = manifest.get("Lifecycle")
    if raw is None:
        raw = recipe.get("Lifecycle") or {}
    if not isinstance(raw, Mapping):
        raise RecipeError(f"recipe {recipe.get('ComponentName', '?')}: Lifecycle must be a mapping")
    out: dict[str, Any] = {}
    for step, value in raw.items():
        if step == "Setenv":
            out[step] = {str(k): str(v) for k, v in (value or {}).items()}
        elif isinstance(value, str):
            out[step] = {"Script": value}
        elif isinstance(value, Mapping):
            out[step] = dict(value)
        else:
            raise RecipeError(f"recipe {recipe.get('ComponentName', '?')}: Lifecycle.{step} must be a script "
                              f"string or a mapping")
    return out


# -- artifacts ---------------------------------------------------------------------------------------------------
def artifact_digest(data: bytes) -> str:
    """What recipes carry as `Digest`: the base64 of the SHA-256 of the bytes."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


@dataclass(frozen=True)
class Artifact:
    uri: str
    bucket: str
    key: str
    file_name: str
    digest: str | None
    unarchive: str  # "NONE" | "ZIP"


def artifacts(recipe: Mapping[str, Any], manifest: Mapping[str, Any]) -> list[Artifact]:
    name = recipe.get("ComponentName", "?")
    out = []
    for i, raw in enumerate(manifest.get("Artifacts") or []):
        uri = raw.get("URI") or raw.get("Uri") or ""
        m = re.fullmatch(r"s3://([^/]+)/(.+)", uri)
        if not m:
            raise RecipeError(f"recipe {name}: Artifacts[{i}].URI {uri!r} is not an s3://bucket/key URI")
        algorithm = raw.get("Algorithm", "SHA-256")
        if raw.get("Digest") and algorithm != "SHA-256":
            raise RecipeError(f"recipe {name}: Artifacts[{i}].Algorithm {algorithm!r} is not supported (SHA-256)")
        unarchive = str(raw.get("Unarchive", "NONE")).upper()
        if unarchive not in ("NONE", "ZIP"):
            raise RecipeError(f"recipe {name}: Artifacts[{i}].Unarchive {unarchive!r} must be NONE or ZIP")
        key = m.group(2)
        out.append(Artifact(uri, m.group(1), key, key.rsplit("/", 1)[-1], raw.get("Digest"), unarchive))
    return out


# -- versions ----------------------------------------------------------------------------------------------------
def _version(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?", text.strip())
    if not m:
        raise RecipeError(f"invalid semantic version {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _partial(text: str) -> tuple[list[int], int]:
    """'1.2' -> ([1, 2, 0], 2 given parts); x/X/* parts end the given ones."""
    parts = text.strip().lstrip("v").split("-")[0].split(".")
    given: list[int] = []
    for p in parts[:3]:
        if p in ("x", "X", "*", ""):
            break
        if not p.isdigit():
            raise RecipeError(f"invalid version in requirement: {text!r}")
        given.append(int(p))
    return given + [0] * (3 - len(given)), len(given)


def _comparator(token: str, v: tuple[int, int, int]) -> bool:
    m = re.fullmatch(r"(>=|<=|>|<|=|\^|~)?\s*(.+)", token)
    if not m:
        raise RecipeError(f"invalid version requirement {token!r}")
    op, rest = m.group(1) or "", m.group(2)
    base, given = _partial(rest)
    b = (base[0], base[1], base[2])
    if op in ("", "=") and given < 3:  # x-range: 1.2 == 1.2.x
        return v[:given] == b[:given]
    if op in ("", "="):
        return v == b
    if op == ">=":
        return v >= b
    if op == "<=":
        return v <= b if given == 3 else v[:given] <= b[:given]
    if op == ">":
        return v > b if given == 3 else v[:given] > b[:given]
    if op == "<":
        return v < b
    if op == "~":  # ~1.2.3 := >=1.2.3 <1.3.0; ~1 := 1.x
        upper = (b[0] + 1, 0, 0) if given <= 1 else (b[0], b[1] + 1, 0)
        return b <= v < upper
    # ^: keep the left-most non-zero part
    if b[0] or given <= 1:
        upper = (b[0] + 1, 0, 0)
    elif b[1] or given == 2:
        upper = (0, b[1] + 1, 0)
    else:
        upper = (0, 0, b[2] + 1)
    return b <= v < upper


def matches(version: str, requirement: str) -> bool:
    """npm-style ranges as Greengrass uses them: `>=1.0.0 <2.0.0`, `^1.2.0`, `~1.2`, `1.x`, `*`, `a || b`."""
    v = _version(version)
    for alternative in requirement.split("||"):
        alternative = re.sub(r"(>=|<=|>|<|=|\^|~)\s+", r"\1", alternative.strip())
        tokens = alternative.split()
        if not tokens or all(t in ("*", "x", "X") or _comparator(t, v) for t in tokens):
            return True
    return False


# -- dependency resolution ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dependency:
    name: str
    requirement: str
    hard: bool


def dependencies(recipe: Mapping[str, Any]) -> list[Dependency]:
    name = recipe.get("ComponentName", "?")
    out = []
    for dep, spec in (recipe.get("ComponentDependencies") or {}).items():
        spec = spec or {}
        kind = str(spec.get("DependencyType", "HARD")).upper()
        if kind not in ("HARD", "SOFT"):
            raise RecipeError(f"recipe {name}: ComponentDependencies.{dep}.DependencyType {kind!r} must be "
                              f"HARD or SOFT")
        out.append(Dependency(dep, str(spec.get("VersionRequirement", "*")), kind == "HARD"))
    return out


@dataclass(frozen=True)
class ResolvedComponent:
    name: str
    version: str
    recipe: Mapping[str, Any]
    update: Mapping[str, Any] = field(default_factory=dict)  # the deployment's configurationUpdate
    root: bool = True  # named by the deployment (False: pulled in as a dependency)


RecipeSource = Callable[[str, str], Mapping[str, Any] | None]


def resolve(deployment: Mapping[str, Mapping[str, Any]], recipe_of: RecipeSource,
            installed: Mapping[str, str] | None = None) -> dict[str, ResolvedComponent]:
    """Every component to run: the deployment's (pinned versions) and, transitively, their dependencies.

    A dependency the deployment does not name keeps its installed version when that satisfies every requirement
    (the local component store offers no version listing). Raises ResolutionError naming what conflicts.
    """
    installed = installed or {}
    chosen: dict[str, ResolvedComponent] = {}
    pending: list[str] = []
    for name, spec in deployment.items():
        version = (spec or {}).get("componentVersion")
        if not version:
            raise ResolutionError(f"deployment component {name}: componentVersion is missing")
        update = (spec or {}).get("configurationUpdate") or {}
        chosen[name] = ResolvedComponent(name, str(version), _recipe(recipe_of, name, str(version)), update)
        pending.append(name)
    requirements: dict[str, list[tuple[str, str]]] = {}
    while pending:
        current = chosen[pending.pop()]
        for dep in dependencies(current.recipe):
            if dep.name in PLATFORM_COMPONENTS and dep.name not in chosen:
                if not matches(PLATFORM_COMPONENTS[dep.name], dep.requirement):
                    raise ResolutionError(f"{current.name} {current.version} requires {dep.name} "
                                          f"{dep.requirement!r}; the local stack provides "
                                          f"{PLATFORM_COMPONENTS[dep.name]}")
                continue
            requirements.setdefault(dep.name, []).append((current.name, dep.requirement))
            if dep.name not in chosen:
                version = installed.get(dep.name)
                if version is None:
                    raise ResolutionError(f"{current.name} {current.version} depends on {dep.name} "
                                          f"{dep.requirement!r}, which the deployment does not include")
                chosen[dep.name] = ResolvedComponent(dep.name, version, _recipe(recipe_of, dep.name, version),
                                                     root=False)
                pending.append(dep.name)
    for name, reqs in requirements.items():
        bad = [(who, req) for who, req in reqs if not matches(chosen[name].version, req)]
        if bad:
            raise ResolutionError(f"{name} {chosen[name].version} does not satisfy "
                                  + ", ".join(f"{who}'s requirement {req!r}" for who, req in bad))
    start_order(chosen)  # rejects cycles
    return chosen


def _recipe(recipe_of: RecipeSource, name: str, version: str) -> Mapping[str, Any]:
    recipe = recipe_of(name, version)
    if recipe is None:
        raise ResolutionError(f"component {name} version {version} does not exist")
    if recipe.get("ComponentName") != name or recipe.get("ComponentVersion") != version:
        raise RecipeError(f"the recipe stored for {name} {version} names {recipe.get('ComponentName')} "
                          f"{recipe.get('ComponentVersion')}")
    return recipe


def start_order(components: Mapping[str, ResolvedComponent]) -> list[str]:
    """Dependencies before their dependants (names sorted within a level, so the order is stable)."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ResolutionError(f"dependency cycle: {' -> '.join((*path, name))}")
        state[name] = "visiting"
        for dep in sorted(d.name for d in dependencies(components[name].recipe) if d.name in components):
            visit(dep, (*path, name))
        state[name] = "done"
        order.append(name)

    for name in sorted(components):
        visit(name, ())
    return order


# -- configuration -----------------------------------------------------------------------------------------------
def _pointer_parts(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise RecipeError(f"invalid JSON pointer {pointer!r}: must be empty or start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]


def _lookup(doc: Any, parts: list[str]) -> tuple[bool, Any]:
    for part in parts:
        if isinstance(doc, Mapping) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return False, None
    return True, doc


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def effective_configuration(recipe: Mapping[str, Any], update: Mapping[str, Any] | None = None,
                            current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The component's configuration after a deployment, as the nucleus computes it.

    Starts from `current` (the configuration on the device, when the component is installed) with the recipe's
    `DefaultConfiguration` filling keys it lacks, else from the defaults; applies `reset` (pointers back to
    their default, "" = everything) and then `merge` (a JSON object, or a string of one).
    """
    name = recipe.get("ComponentName", "?")
    defaults = dict((recipe.get("ComponentConfiguration") or {}).get("DefaultConfiguration") or {})
    config = _deep_merge(copy.deepcopy(defaults), current) if current is not None else copy.deepcopy(defaults)
    update = update or {}
    for pointer in update.get("reset") or []:
        parts = _pointer_parts(pointer)
        if not parts:
            config = copy.deepcopy(defaults)
            continue
        found, default = _lookup(defaults, parts)
        found_parent, parent = _lookup(config, parts[:-1])
        if not found_parent or not isinstance(parent, dict):
            continue
        if found:
            parent[parts[-1]] = copy.deepcopy(default)
        else:
            parent.pop(parts[-1], None)
    merge = update.get("merge")
    if isinstance(merge, str) and merge.strip():
        try:
            merge = json.loads(merge)
        except json.JSONDecodeError as e:
            raise RecipeError(f"component {name}: configurationUpdate.merge is not JSON: {e}") from e
    if merge:
        if not isinstance(merge, Mapping):
            raise RecipeError(f"component {name}: configurationUpdate.merge must be a JSON object")
        _deep_merge(config, merge)
    return config


# -- recipe variables --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DevicePaths:
    """The Greengrass layout of one core device under its root."""

    root: Path
    thing: str

    def artifacts(self, component: str, version: str) -> Path:
        return self.root / "packages" / "artifacts" / component / version

    def unarchived(self, component: str, version: str) -> Path:
        return self.root / "packages" / "artifacts-unarchived" / component / version

    def work(self, component: str) -> Path:
        return self.root / "work" / component

    def config(self, component: str) -> Path:
        return self.root / "config" / f"{component}.json"

    def log(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"


_VARIABLE = re.compile(r"\{(?:([A-Za-z0-9._-]+):)?(artifacts|work|configuration|kernel|iot):([^{}]*)\}")


def interpolate(text: str, component: str, components: Mapping[str, tuple[str, Mapping[str, Any]]],
                paths: DevicePaths, dependencies_of: Mapping[str, set[str]] | None = None) -> str:
    """Replace recipe variables in `text` (a script of `component`).

    `components` maps each component of the deployment to (version, effective configuration). A cross-component
    variable (`{other:artifacts:path}`) must name a dependency of `component`, as on the real nucleus.
    Other `{...}` text (e.g. bash `${HOME}`) is left alone.
    """

    def replace(m: re.Match[str]) -> str:
        owner, namespace, key = m.group(1), m.group(2), m.group(3)
        if namespace == "kernel":
            if key != "rootPath":
                raise RecipeError(f"component {component}: unknown recipe variable {m.group(0)}")
            return str(paths.root)
        if namespace == "iot":
            if key != "thingName":
                raise RecipeError(f"component {component}: unknown recipe variable {m.group(0)}")
            return paths.thing
        target = owner or component
        if owner and owner != component and owner not in (dependencies_of or {}).get(component, set()):
            raise RecipeError(f"component {component}: {m.group(0)} names {owner}, which is not one of its "
                              f"dependencies")
        if target not in components:
            raise RecipeError(f"component {component}: {m.group(0)} names {target}, which is not deployed")
        version, config = components[target]
        if namespace == "artifacts" and key == "path":
            return str(paths.artifacts(target, version))
        if namespace == "artifacts" and key == "decompressedPath":
            return str(paths.unarchived(target, version))
        if namespace == "work" and key == "path":
            return str(paths.work(target))
        if namespace == "configuration":
            found, value = _lookup(config, _pointer_parts(key))
            if not found:
                raise RecipeError(f"component {component}: {m.group(0)}: no such key in {target}'s configuration")
            return value if isinstance(value, str) else json.dumps(value)
        raise RecipeError(f"component {component}: unknown recipe variable {m.group(0)}")

    return _VARIABLE.sub(replace, text)


def interpolated_lifecycle(name: str, components: Mapping[str, tuple[str, Mapping[str, Any]]],
                           recipe: Mapping[str, Any], paths: DevicePaths,
                           dependencies_of: Mapping[str, set[str]]) -> dict[str, Any]:
    """The component's lifecycle with every variable replaced (what decides whether it must restart)."""
    steps = lifecycle(recipe, select_manifest(recipe))
    out: dict[str, Any] = {}
    for step, value in steps.items():
        if step == "Setenv":
            out[step] = {k: interpolate(v, name, components, paths, dependencies_of) for k, v in value.items()}
            continue
        resolved = dict(value)
        if "Script" in resolved:
            resolved["Script"] = interpolate(str(resolved["Script"]), name, components, paths, dependencies_of)
        if isinstance(resolved.get("Setenv"), Mapping):
            resolved["Setenv"] = {k: interpolate(str(v), name, components, paths, dependencies_of)
                                  for k, v in resolved["Setenv"].items()}
        out[step] = resolved
    return out
