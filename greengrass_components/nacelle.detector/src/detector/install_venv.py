"""Install step of the nacelle.detector component (standard library only: it runs before any venv exists).

Creates, or reuses, `<venvs root>/<sha256 of requirements.txt>[:16]`: `python3 -m venv`, then
`pip install --no-index --find-links <wheels dir> -r requirements.txt` (the component's wheel artifacts,
no network). Several devices may run it at once against one root: the build happens under an exclusive
fcntl lock, and a venv counts only once its completion marker exists (written atomically last); a
leftover without the marker (an interrupted install) is removed and rebuilt. Prints the venv path and,
with --record, writes it atomically to that file for the Run step.

Venvs root: --venvs-root when not empty, else $NACELLE_VENVS_ROOT, else --default-venvs-root.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

MARKER = ".nacelle-complete"
HASH_CHARS = 16
ENV_ROOT = "NACELLE_VENVS_ROOT"


class InstallError(RuntimeError):
    """The venv could not be built; the message names the step and the reason."""


def requirements_hash(requirements: Path) -> str:
    try:
        return hashlib.sha256(requirements.read_bytes()).hexdigest()[:HASH_CHARS]
    except OSError as exc:
        raise InstallError(f"{requirements}: cannot read the requirements file: {exc.strerror}") from exc


def venv_dir(root: Path, requirements: Path) -> Path:
    return root / requirements_hash(requirements)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-20:])
        raise InstallError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def ensure_venv(root: Path, requirements: Path, wheels: Path, python: str = sys.executable) -> Path:
    """The complete venv for these requirements, built from `wheels` if no complete one exists yet."""
    if not wheels.is_dir():
        raise InstallError(f"{wheels}: the wheels directory does not exist")
    target = venv_dir(root, requirements)
    marker = target / MARKER
    if marker.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{target.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if marker.is_file():  # another device finished it while we waited
            return target
        if target.exists():
            shutil.rmtree(target)  # an interrupted install: no marker, so never used
        _run([python, "-m", "venv", str(target)], "python3 -m venv")
        _run([str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index",
              "--disable-pip-version-check", "--no-input", "--find-links", str(wheels),
              "-r", str(requirements)], "pip install")
        _write_atomic(marker, requirements_hash(requirements) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requirements", type=Path, required=True)
    parser.add_argument("--wheels", type=Path, required=True, help="directory holding the wheel files")
    parser.add_argument("--venvs-root", default="", help="shared venvs root (empty: see --default-venvs-root)")
    parser.add_argument("--default-venvs-root", type=Path, required=True)
    parser.add_argument("--record", type=Path, help="file to write the venv path to")
    args = parser.parse_args(argv)
    root = Path(args.venvs_root or os.environ.get(ENV_ROOT) or args.default_venvs_root).resolve()
    try:
        target = ensure_venv(root, args.requirements.resolve(), args.wheels.resolve())
        if args.record:
            args.record.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(args.record, f"{target}\n")
    except (InstallError, OSError) as exc:
        print(f"install_venv: {exc}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
