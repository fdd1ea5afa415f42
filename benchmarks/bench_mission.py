"""`make run` timed: the duration of each stage of the mission and `make_run_seconds` (goal <= 120 s).

Runs the real mission (5 simulated turbines, two trainings, two rollouts, injected faults, alerts) in a
temporary data directory; takes under 2 minutes on 2 cores.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

from nacelle.demo import Step, run_demo

GOAL_S = 120.0


def main() -> int:
    step = Step()
    with tempfile.TemporaryDirectory(prefix="nacelle-mission-") as tmp:
        started = time.perf_counter()
        code = run_demo(Path(tmp) / "demo", step)
        total = time.perf_counter() - started
    for name, seconds in step.durations.items():
        key = re.sub(r"[^a-z0-9]+", "_", name.split(" (equivalent")[0].lower()).strip("_")[:60]
        print(f"make_run_stage_{key}_seconds={seconds:.1f}")
    print(f"make_run_seconds={total:.1f}")
    print(f"make_run_goal_seconds={GOAL_S:.0f}")
    return code


if __name__ == "__main__":
    sys.exit(main())
