"""Puts `src` (the `sensors` package) and the detector's `src` (its pipeline scores what the sensors publish) on
sys.path for the sensors component's tests; the session fixtures (small_dataset, trained_model) come from the
repository's root conftest.py."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for src in (HERE / "src", HERE.parent / "nacelle.detector" / "src"):
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
