"""Run every benchmark in this folder; each prints its figures as `name=value` lines."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                   if m.name.startswith("bench_"))
    failed = []
    for name in names:
        print(f"# {name}", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        if module.main() != 0:
            failed.append(name)
    if failed:
        print(f"# failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
