"""Reproducible performance and quality measurements. `make bench` runs them all."""

import os

os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")  # figures, not log lines
