"""Build and publish the Nacelle components (`make components`; docs/fleet.md "Components").

Two components are built from this checkout, each described by a ComponentSource: nacelle.detector and
nacelle.sensors (docs/sensors.md).

build: a deterministic <package>.zip (the component's package, main.py, requirements.txt, install_venv.py at
the root as the recipe expects, and the repository modules it imports — found by walking the imports, never
listed by hand: `shared` for both, plus the simulator's physics, `nacelle.simulator`, for the sensors), one
artifact per wheel of its wheelhouse, and recipe.yaml rendered with their URIs and base64 SHA-256 digests into
build/components/<name>/<VERSION>/recipe.json.

publish: copies recipe and artifacts to components/<name>/<VERSION>/ with put_if_absent; an existing object
with other bytes means the code changed without bumping VERSION -> Conflict.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared.components import (
    DETECTOR_COMPONENT,
    SENSORS_COMPONENT,
    artifact_digest,
    component_prefix,
    deterministic_zip,
)
from shared.errors import ConfigurationError, Conflict
from shared.ports import ObjectStore

REPO = Path(__file__).resolve().parents[1]
COMPONENT_DIR = REPO / "greengrass_components" / DETECTOR_COMPONENT
BUILD_ROOT = REPO / "build"
WHEELHOUSE = BUILD_ROOT / "wheelhouse"
LOCAL_BUCKET = "nacelle-data"
DETECTOR_ZIP = "detector.zip"
RECIPE_FILE = "recipe.json"
WHEELS = "wheels"
INSTALLER = "install_venv.py"
SHARED = "shared"
# Never on a device: Lambda-side dependencies (heavy, and not in the components' requirements).
FORBIDDEN_IMPORTS = frozenset({"pydantic", "boto3", "botocore", "aws_lambda_powertools"})


@dataclass(frozen=True)
class ComponentSource:
    """One component of this repository: where its sources are and what its archive holds."""

    name: str
    directory: Path  # greengrass_components/<name>: VERSION, recipe.yaml, requirements.txt, src/
    package: str  # src/<package>/: the component's code
    installer: Path  # install_venv.py (the detector's, shared by both: one installer)
    wheelhouse: Path
    packaged: tuple[str, ...] = (SHARED,)  # repository modules followed and packaged when imported
    data: tuple[str, ...] = ()  # repository files the modules read at run time

    @property
    def archive(self) -> str:
        return f"{self.package}.zip"


DETECTOR = ComponentSource(DETECTOR_COMPONENT, COMPONENT_DIR, "detector",
                           COMPONENT_DIR / "src" / "detector" / INSTALLER, WHEELHOUSE)
SENSORS_DIR = REPO / "greengrass_components" / SENSORS_COMPONENT
SENSORS = ComponentSource(SENSORS_COMPONENT, SENSORS_DIR, "sensors", DETECTOR.installer,
                          BUILD_ROOT / "wheelhouse-sensors", packaged=(SHARED, "nacelle.simulator"),
                          data=("shared/specs/mini-turbine.yaml",))
COMPONENTS = {c.name: c for c in (DETECTOR, SENSORS)}


@dataclass(frozen=True)
class BuiltComponent:
    version: str
    directory: Path  # build/components/nacelle.detector/<version>
    recipe: dict[str, Any]


def read_version(component_dir: Path = COMPONENT_DIR) -> str:
    """A component's pinned version (its VERSION file; default the detector's): what `make components` builds and
    the local stack deploys; the one reader of the file."""
    path = component_dir / "VERSION"
    try:
        version = path.read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the component version: {exc.strerror}") from exc
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ConfigurationError(f"{path}: version must be MAJOR.MINOR.PATCH, got {version!r}")
    return version


# ------------------------------------------------------------------ import closure
def _imports(path: Path, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every import in a file, except `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_bytes(), str(path))
    found: list[tuple[str, list[str]]] = []

    def visit(nodes: Iterable[ast.stmt | ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.extend((alias.name, []) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join([*package, base] if base else package)
                found.append((base, [alias.name for alias in node.names]))
            visit(ast.iter_child_nodes(node))

    visit(tree.body)
    return found


def _module_file(repo: Path, module: str) -> Path | None:
    base = repo.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def shared_closure(entry_files: Iterable[Path], repo: Path = REPO,
                   packaged: tuple[str, ...] = (SHARED,)) -> dict[str, Path]:
    """{archive name: file} of the repository modules the entry files import, transitively, with the
    `__init__.py` of every package on the way: modules under `packaged` (e.g. `shared`, `nacelle.simulator`).
    Raises ConfigurationError on a forbidden import, or one of another module of the same top-level package
    (e.g. `nacelle.local` when only `nacelle.simulator` is packaged)."""
    tops = {p.split(".")[0] for p in packaged}
    out: dict[str, Path] = {}
    todo: list[tuple[Path, str, bool]] = [(f, f.stem, False) for f in entry_files]
    seen: set[Path] = set()
    while todo:
        path, module, is_package = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name, names in _imports(path, module, is_package):
            top = name.split(".")[0]
            if top in FORBIDDEN_IMPORTS:
                raise ConfigurationError(f"{path}: imports {name!r}, which must not reach the device "
                                         f"(forbidden: {', '.join(sorted(FORBIDDEN_IMPORTS))})")
            if top not in tops:
                continue
            if not any(name == p or name.startswith(p + ".") or p.startswith(name + ".") for p in packaged):
                raise ConfigurationError(f"{path}: imports {name!r}, which is not packaged with the component "
                                         f"(packaged: {', '.join(packaged)})")
            candidates = [name, *(f"{name}.{n}" for n in names if n != "*")]
            for mod in candidates:
                parts = mod.split(".")
                for i in range(1, len(parts) + 1):  # the module and every package above it
                    sub = ".".join(parts[:i])
                    file = _module_file(repo, sub)
                    if file is None:
                        if mod == name and i == len(parts):
                            raise ConfigurationError(f"{path}: imports {name!r}, not found under {repo}")
                        continue
                    arcname = file.relative_to(repo).as_posix()
                    if arcname not in out:
                        out[arcname] = file
                        todo.append((file, sub, file.name == "__init__.py"))
    return dict(sorted(out.items()))


# ------------------------------------------------------------------ <package>.zip
def detector_entries(component_dir: Path = COMPONENT_DIR, repo: Path = REPO) -> dict[str, bytes]:
    """Archive name -> bytes of detector.zip."""
    return component_entries(DETECTOR, component_dir, repo)


def component_entries(source: ComponentSource, component_dir: Path | None = None,
                      repo: Path = REPO) -> dict[str, bytes]:
    """Archive name -> bytes of the component's zip."""
    component_dir = component_dir or source.directory
    src = component_dir / "src"
    package = src / source.package
    installer = package / INSTALLER if (package / INSTALLER).is_file() else source.installer
    required = {"main.py": src / "main.py", "requirements.txt": component_dir / "requirements.txt",
                INSTALLER: installer, "VERSION": component_dir / "VERSION"}
    for name, path in required.items():
        if not path.is_file():
            raise ConfigurationError(f"{path}: missing ({name} is part of {source.archive})")
    modules = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts and p.name != INSTALLER)
    if not (package / "__init__.py").is_file():
        raise ConfigurationError(f"{package}: not a package (no __init__.py)")
    entries = {name: path.read_bytes() for name, path in required.items()}
    entries.update({p.relative_to(src).as_posix(): p.read_bytes() for p in modules})
    # main.py runs as a script: `import detector.x` there is absolute, so walk it as module "main"
    closure = shared_closure([src / "main.py", *modules], repo, source.packaged)
    closure.update({name: repo / name for name in source.data})
    for arcname, path in closure.items():
        if arcname in entries:
            raise ConfigurationError(f"{path}: {arcname} clashes with a file of the component")
        if not path.is_file():
            raise ConfigurationError(f"{path}: missing (a data file of {source.archive})")
        entries[arcname] = path.read_bytes()
    return entries


# ------------------------------------------------------------------ recipe
def load_template(component_dir: Path = COMPONENT_DIR, name: str = DETECTOR_COMPONENT) -> dict[str, Any]:
    path = component_dir / "recipe.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"{path}: cannot read the recipe template: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("ComponentName") != name:
        raise ConfigurationError(f"{path}: ComponentName must be {name}")
    linux = [m for m in doc.get("Manifests") or [] if (m.get("Platform") or {}).get("os") == "linux"]
    if len(linux) != 1:
        raise ConfigurationError(f"{path}: Manifests must hold exactly one linux manifest, found {len(linux)}")
    return doc


def render_recipe(template: Mapping[str, Any], version: str, artifacts: Mapping[str, bytes],
                  uri: Callable[[str], str]) -> dict[str, Any]:
    """The recipe with ComponentVersion and the linux manifest's Artifacts; `artifacts` maps names
    relative to the component prefix (<package>.zip, wheels/<file>) to bytes; only zips are unarchived."""
    recipe = json.loads(json.dumps(template))
    recipe["ComponentVersion"] = version
    prefix = component_prefix(str(recipe["ComponentName"]), version)
    rendered = []
    for name in sorted(artifacts, key=lambda n: (not n.endswith(".zip"), n)):
        entry: dict[str, Any] = {"Uri": uri(prefix + name), "Digest": artifact_digest(artifacts[name]),
                                 "Algorithm": "SHA-256"}
        if name.endswith(".zip"):
            entry["Unarchive"] = "ZIP"
        rendered.append(entry)
    for manifest in recipe["Manifests"]:
        if (manifest.get("Platform") or {}).get("os") == "linux":
            manifest["Artifacts"] = rendered
    return recipe


def _s3_uri(bucket: str) -> Callable[[str], str]:
    return lambda key: f"s3://{bucket}/{key}"


# ------------------------------------------------------------------ build and publish
def build(out_root: Path = BUILD_ROOT, wheelhouse: Path | None = None, bucket: str = LOCAL_BUCKET,
          component_dir: Path | None = None, repo: Path = REPO, source: ComponentSource = DETECTOR) -> BuiltComponent:
    wheelhouse = wheelhouse or source.wheelhouse
    component_dir = component_dir or source.directory
    wheels = sorted(wheelhouse.glob("*.whl")) if wheelhouse.is_dir() else []
    if not wheels:
        target = "wheelhouse" if source is DETECTOR else f"wheelhouse-{source.package}"
        raise ConfigurationError(f"{wheelhouse}: no wheels (run `make {target}` first)")
    version = read_version(component_dir)
    template = load_template(component_dir, source.name)
    directory = out_root / "components" / source.name / version
    if directory.exists():
        shutil.rmtree(directory)  # nothing stale from an earlier build
    (directory / WHEELS).mkdir(parents=True)
    artifacts = {source.archive: deterministic_zip(component_entries(source, component_dir, repo))}
    artifacts.update({f"{WHEELS}/{w.name}": w.read_bytes() for w in wheels})
    for name, data in artifacts.items():
        (directory / name).write_bytes(data)
    recipe = render_recipe(template, version, artifacts, _s3_uri(bucket))
    (directory / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
    return BuiltComponent(version, directory, recipe)


def publish(store: ObjectStore, build_dir: Path) -> list[str]:
    """Put a built component (build/components/<name>/<ver>) under components/<name>/<ver>/ of the store; the
    recipe's URIs are re-rendered for the store's bucket. Returns the keys newly written. Idempotent; raises
    Conflict when an object already there has other bytes."""
    version = build_dir.name
    recipe_path = build_dir / RECIPE_FILE
    try:
        built = json.loads(recipe_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{recipe_path}: cannot read the built recipe: {exc}") from exc
    if built.get("ComponentVersion") != version:
        raise ConfigurationError(f"{recipe_path}: ComponentVersion {built.get('ComponentVersion')!r} "
                                 f"does not match the build directory {version!r}")
    name = str(built.get("ComponentName"))
    if name not in COMPONENTS:
        raise ConfigurationError(f"{recipe_path}: ComponentName {name!r} is not one of {', '.join(COMPONENTS)}")
    prefix = component_prefix(name, version)
    archive = COMPONENTS[name].archive
    artifacts = {archive: (build_dir / archive).read_bytes()}
    artifacts.update({f"{WHEELS}/{w.name}": w.read_bytes() for w in sorted((build_dir / WHEELS).glob("*.whl"))})
    recipe = render_recipe(built, version, artifacts, store.uri)
    objects = {**artifacts, RECIPE_FILE: (json.dumps(recipe, indent=2, sort_keys=True) + "\n").encode()}
    written = []
    for name in sorted(objects, key=lambda n: n == RECIPE_FILE):  # the recipe last: it names the others
        key, data = prefix + name, objects[name]
        content_type = "application/json" if name == RECIPE_FILE else "application/octet-stream"
        if store.put_if_absent(key, data, content_type):
            written.append(key)
        elif store.get(key) != data:
            raise Conflict(f"{store.uri(key)} already exists with other content: the {name} "
                           f"component changed without bumping VERSION ({version}) in "
                           f"greengrass_components/{name}/VERSION")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nacelle.components", description="Build the components.")
    parser.add_argument("--out", type=Path, default=BUILD_ROOT)
    parser.add_argument("--component", choices=[*COMPONENTS, "all"], default=DETECTOR_COMPONENT)
    parser.add_argument("--wheelhouse", type=Path, default=None, help="default: the component's own")
    parser.add_argument("--bucket", default=LOCAL_BUCKET, help="bucket named in the built recipe's URIs")
    args = parser.parse_args(argv)
    chosen = list(COMPONENTS.values()) if args.component == "all" else [COMPONENTS[args.component]]
    for source in chosen:
        try:
            built = build(args.out, args.wheelhouse, args.bucket, source=source)
        except ConfigurationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        artifacts = built.recipe["Manifests"][0]["Artifacts"]
        print(f"{source.name} {built.version}: {built.directory / RECIPE_FILE} ({len(artifacts)} artifacts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
