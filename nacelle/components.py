"""Build and publish the nacelle.detector component (`make components`; docs/fleet.md "Components").

build: a deterministic detector.zip (the `detector` package, main.py, requirements.txt, install_venv.py
at the root as the recipe expects, and the shared modules the detector imports — found by walking the
imports, never listed by hand), one artifact per wheel of the wheelhouse, and recipe.yaml rendered with
their URIs and base64 SHA-256 digests into build/components/nacelle.detector/<VERSION>/recipe.json.

publish: copies recipe and artifacts to components/nacelle.detector/<VERSION>/ with put_if_absent; an
existing object with other bytes means the code changed without bumping VERSION -> Conflict.
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

from shared.components import DETECTOR_COMPONENT, artifact_digest, detector_prefix, deterministic_zip
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
# Never on a device: Lambda-side dependencies (heavy, and not in the detector's requirements).
FORBIDDEN_IMPORTS = frozenset({"pydantic", "boto3", "botocore", "aws_lambda_powertools"})


@dataclass(frozen=True)
class BuiltComponent:
    version: str
    directory: Path  # build/components/nacelle.detector/<version>
    recipe: dict[str, Any]


def read_version(component_dir: Path = COMPONENT_DIR) -> str:
    """The pinned detector component version (its VERSION file): what `make components` builds and the local
    stack deploys; the one reader of the file."""
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


def shared_closure(entry_files: Iterable[Path], repo: Path = REPO) -> dict[str, Path]:
    """{archive name: file} of the shared modules the entry files import, transitively, with the
    `__init__.py` of every package on the way. Raises ConfigurationError on a forbidden import."""
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
            if top != SHARED:
                continue
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


# ------------------------------------------------------------------ detector.zip
def detector_entries(component_dir: Path = COMPONENT_DIR, repo: Path = REPO) -> dict[str, bytes]:
    """Archive name -> bytes of detector.zip."""
    src = component_dir / "src"
    package = src / "detector"
    required = {"main.py": src / "main.py", "requirements.txt": component_dir / "requirements.txt",
                INSTALLER: package / INSTALLER}
    for name, path in required.items():
        if not path.is_file():
            raise ConfigurationError(f"{path}: missing ({name} is part of {DETECTOR_ZIP})")
    modules = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts and p.name != INSTALLER)
    if not (package / "__init__.py").is_file():
        raise ConfigurationError(f"{package}: not a package (no __init__.py)")
    entries = {name: path.read_bytes() for name, path in required.items()}
    entries.update({p.relative_to(src).as_posix(): p.read_bytes() for p in modules})
    # main.py runs as a script: `import detector.x` there is absolute, so walk it as module "main"
    closure = shared_closure([src / "main.py", *modules], repo)
    for arcname, path in closure.items():
        if arcname in entries:
            raise ConfigurationError(f"{path}: {arcname} clashes with a file of the component")
        entries[arcname] = path.read_bytes()
    return entries


# ------------------------------------------------------------------ recipe
def load_template(component_dir: Path = COMPONENT_DIR) -> dict[str, Any]:
    path = component_dir / "recipe.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"{path}: cannot read the recipe template: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("ComponentName") != DETECTOR_COMPONENT:
        raise ConfigurationError(f"{path}: ComponentName must be {DETECTOR_COMPONENT}")
    linux = [m for m in doc.get("Manifests") or [] if (m.get("Platform") or {}).get("os") == "linux"]
    if len(linux) != 1:
        raise ConfigurationError(f"{path}: Manifests must hold exactly one linux manifest, found {len(linux)}")
    return doc


def render_recipe(template: Mapping[str, Any], version: str, artifacts: Mapping[str, bytes],
                  uri: Callable[[str], str]) -> dict[str, Any]:
    """The recipe with ComponentVersion and the linux manifest's Artifacts; `artifacts` maps names
    relative to the component prefix (detector.zip, wheels/<file>) to bytes; only zips are unarchived."""
    recipe = json.loads(json.dumps(template))
    recipe["ComponentVersion"] = version
    prefix = detector_prefix(version)
    rendered = []
    for name in sorted(artifacts, key=lambda n: (n != DETECTOR_ZIP, n)):
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
def build(out_root: Path = BUILD_ROOT, wheelhouse: Path = WHEELHOUSE, bucket: str = LOCAL_BUCKET,
          component_dir: Path = COMPONENT_DIR, repo: Path = REPO) -> BuiltComponent:
    wheels = sorted(wheelhouse.glob("*.whl")) if wheelhouse.is_dir() else []
    if not wheels:
        raise ConfigurationError(f"{wheelhouse}: no wheels (run `make wheelhouse` first)")
    version = read_version(component_dir)
    template = load_template(component_dir)
    directory = out_root / "components" / DETECTOR_COMPONENT / version
    if directory.exists():
        shutil.rmtree(directory)  # nothing stale from an earlier build
    (directory / WHEELS).mkdir(parents=True)
    artifacts = {DETECTOR_ZIP: deterministic_zip(detector_entries(component_dir, repo))}
    artifacts.update({f"{WHEELS}/{w.name}": w.read_bytes() for w in wheels})
    for name, data in artifacts.items():
        (directory / name).write_bytes(data)
    recipe = render_recipe(template, version, artifacts, _s3_uri(bucket))
    (directory / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
    return BuiltComponent(version, directory, recipe)


def publish(store: ObjectStore, build_dir: Path) -> list[str]:
    """Put a built component (build/components/nacelle.detector/<ver>) under components/nacelle.detector/<ver>/
    of the store; the recipe's URIs are re-rendered for the store's bucket. Returns the keys newly written.
    Idempotent; raises Conflict when an object already there has other bytes."""
    version = build_dir.name
    prefix = detector_prefix(version)
    recipe_path = build_dir / RECIPE_FILE
    try:
        built = json.loads(recipe_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{recipe_path}: cannot read the built recipe: {exc}") from exc
    if built.get("ComponentVersion") != version:
        raise ConfigurationError(f"{recipe_path}: ComponentVersion {built.get('ComponentVersion')!r} "
                                 f"does not match the build directory {version!r}")
    artifacts = {DETECTOR_ZIP: (build_dir / DETECTOR_ZIP).read_bytes()}
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
            raise Conflict(f"{store.uri(key)} already exists with other content: the {DETECTOR_COMPONENT} "
                           f"component changed without bumping VERSION ({version}) in "
                           f"greengrass_components/{DETECTOR_COMPONENT}/VERSION")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nacelle.components", description="Build the detector component.")
    parser.add_argument("--out", type=Path, default=BUILD_ROOT)
    parser.add_argument("--wheelhouse", type=Path, default=WHEELHOUSE)
    parser.add_argument("--bucket", default=LOCAL_BUCKET, help="bucket named in the built recipe's URIs")
    args = parser.parse_args(argv)
    try:
        built = build(args.out, args.wheelhouse, args.bucket)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    artifacts = built.recipe["Manifests"][0]["Artifacts"]
    print(f"{DETECTOR_COMPONENT} {built.version}: {built.directory / RECIPE_FILE} ({len(artifacts)} artifacts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
