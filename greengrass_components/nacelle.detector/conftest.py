"""Puts `src` (the `detector` package) on sys.path for the detector's tests; the session fixtures
(small_dataset, trained_model) come from the repository's root conftest.py."""

from __future__ import annotations

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
