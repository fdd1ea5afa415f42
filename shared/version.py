"""The code version recorded in lineage: package version plus a digest of the ML source."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

PACKAGE_VERSION = "0.1.0"
_ROOT = Path(__file__).resolve().parent.parent
_SOURCES = ("shared/ml", "training_jobs")


@cache
def code_version() -> str:
    """`0.1.0+<sha256[:12]>` over the files that decide what a model computes."""
    digest = hashlib.sha256()
    for folder in _SOURCES:
        for path in sorted((_ROOT / folder).rglob("*.py")):
            digest.update(path.relative_to(_ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return f"{PACKAGE_VERSION}+{digest.hexdigest()[:12]}"
