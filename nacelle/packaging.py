"""Build what `make deploy` uploads: the training code archive and the Lambda layer's source folder.

* `build_sourcedir(out)` writes `out/sourcedir.tar.gz`, the script-mode code of the SageMaker training job
  (`sagemaker_submit_directory`) and of the compile step (`python -m training_jobs.compile`): train_entry.py,
  training_jobs/, the part of shared/ they import, and requirements.txt at the root (the training toolkit
  pip-installs it). The archive is byte-for-byte reproducible: sorted entries, mtime 0, uid/gid 0, fixed modes,
  a gzip header without name or time. So an unchanged tree gives an unchanged archive and the upload can be
  skipped (see nacelle.aws_tools.upload_if_changed).
* `build_layer(out)` lays out `out/layer/` (template.yaml's SharedLayer ContentUri is build/layer): the whole
  shared/ package and requirements.txt; `sam build` installs the requirements for python3.12/arm64.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from shared.errors import ConfigurationError

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCEDIR_NAME = "sourcedir.tar.gz"
LAYER_DIR = "layer"
ENTRY_POINT = "train_entry.py"
TRAINING_REQUIREMENTS = "training_jobs/requirements.txt"
LAYER_REQUIREMENTS = "deploy/layer-requirements.txt"

# What the training and compile jobs import from shared/ (tests/unit/test_packaging.py runs both from the
# unpacked archive, with nothing else on the path, so a missing module fails there and not in SageMaker).
SOURCEDIR_SHARED_FILES = ("shared/__init__.py", "shared/capture.py", "shared/errors.py", "shared/unique_keys.py",
                          "shared/version.py")
SOURCEDIR_SHARED_TREES = ("shared/ml", "shared/specs")

_SKIP_DIRS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", "tests"})
_SKIP_SUFFIXES = (".pyc", ".pyo", "~", ".swp", ".orig", ".rej")
_GZIP_LEVEL = 9
_FILE_MODE = 0o644
_DIR_MODE = 0o755


def _keep(path: Path) -> bool:
    return not path.name.startswith(".") and not path.name.endswith(_SKIP_SUFFIXES)


def _tree(root: Path, folder: str) -> Iterator[str]:
    """Relative POSIX paths of the files under root/folder, without caches, tests and hidden files."""
    base = root / folder
    if not base.is_dir():
        raise ConfigurationError(f"{base}: no such directory")
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if _keep(path) and path.is_file():
                yield path.relative_to(root).as_posix()


def sourcedir_members(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Archive name -> source file, for every member of sourcedir.tar.gz."""
    members: dict[str, Path] = {}
    names = [ENTRY_POINT, TRAINING_REQUIREMENTS, *SOURCEDIR_SHARED_FILES]
    names += [n for n in _tree(root, "training_jobs") if n.endswith(".py")]
    for folder in SOURCEDIR_SHARED_TREES:
        names += list(_tree(root, folder))
    for name in names:
        members[name] = root / name
    members["requirements.txt"] = root / TRAINING_REQUIREMENTS  # the toolkit installs the root's file
    missing = sorted(name for name, path in members.items() if not path.is_file())
    if missing:
        raise ConfigurationError(f"cannot build {SOURCEDIR_NAME}: missing {', '.join(missing)} under {root}")
    return dict(sorted(members.items()))


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = _FILE_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_deterministic_tar_gz(target: Path, members: Iterable[tuple[str, bytes]]) -> Path:
    """Write a gzip'd tar of (name, content) sorted by name, with no timestamps or owners; atomic."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with partial.open("wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=_GZIP_LEVEL, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in sorted(members):
                tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def build_sourcedir(out: Path, root: Path = REPO_ROOT) -> Path:
    """Write out/sourcedir.tar.gz (see the module doc) and return its path."""
    members = [(name, path.read_bytes()) for name, path in sourcedir_members(root).items()]
    return write_deterministic_tar_gz(Path(out) / SOURCEDIR_NAME, members)


def layer_members(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Layer-relative name -> source file: requirements.txt and shared/ without caches or tests."""
    members = {name: root / name for name in _tree(root, "shared")}
    requirements = root / LAYER_REQUIREMENTS
    if not requirements.is_file():
        raise ConfigurationError(f"cannot build the layer: {requirements} is missing")
    members["requirements.txt"] = requirements
    return dict(sorted(members.items()))


def build_layer(out: Path, root: Path = REPO_ROOT) -> Path:
    """Lay out out/layer/ afresh for SAM's python3.12 layer build and return it.

    An existing out/layer is replaced only when it holds nothing but what this function writes, so a wrong
    --out cannot delete anything else.
    """
    layer = Path(out) / LAYER_DIR
    members = layer_members(root)
    if layer.exists():
        expected = {"requirements.txt", "shared"}
        extra = sorted(p.name for p in layer.iterdir()) if layer.is_dir() else [layer.name]
        if not layer.is_dir() or not set(extra) <= expected:
            raise ConfigurationError(f"{layer} exists and holds {extra}, not a generated layer; remove it or "
                                     f"choose another --out")
        shutil.rmtree(layer)
    for name, source in members.items():
        target = layer / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return layer
