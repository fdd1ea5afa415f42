"""Local-stack latencies of the chain: `drop_to_pending_seconds`, `approve_to_bundle_seconds`.

Generates 3 turbines x 2 h of the default data (default faults), starts the local stack with its
default settings (15 s quiet period included), drops the data and measures until a model version is
registered (PendingManualApproval, or Rejected if the gate says so: the figure is the chain's
latency). Goal <= 60 s on 2 cores. Then approves that version and
measures until compiled/<group>/<version>/manifest.json exists (ONNX export, equivalence check,
latency measurement included).

Run alone: `.venv/bin/python -m benchmarks.bench_chain`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from nacelle.commands import upload_keys
from nacelle.local.runtime.up import background_stack, wait_for
from nacelle.simulator.generate import generate_dataset

TURBINES, HOURS, GOAL_S = 3, 2.0, 60.0


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_dataset(root / "data", TURBINES, HOURS, "default", 0)
        with background_stack(root / "home") as stack:
            started = time.perf_counter()
            for path, key in upload_keys([root / "data"]).files:
                stack.store.put_if_absent(key, path.read_bytes())
            version = wait_for(lambda: next(reversed(stack.registry.list(stack.settings.group)), None), 300,
                               "a registered model version")
            elapsed = time.perf_counter() - started
            print(f"drop_to_pending_seconds={elapsed:.1f} ({TURBINES} turbines x {HOURS:g} h; goal <= {GOAL_S:g})")
            print(f"drop_to_pending_status={version.status}", flush=True)
            started = time.perf_counter()
            stack.registry.set_status(version.group, version.version, "Approved", "benchmark", "bench")
            manifest = f"compiled/{version.group}/{version.version}/manifest.json"
            wait_for(lambda: stack.store.exists(manifest), 300, manifest)
            print(f"approve_to_bundle_seconds={time.perf_counter() - started:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
