"""Local-stack rollout latency: `approve_to_fleet_seconds`, with 10 simulated core devices.

Trains one small model through the real SageMaker-contract job (as the tests' session fixture does; not timed),
starts the local stack with 10 devices (turbine-01 canary, the rest fleet; mosquitto mTLS, the real detector), and
registers the model twice (v1, v2) the way training_completed does. Each version is approved and timed until every
device's health reports it at a non-zero inference rate, split into approve -> compiled (manifest.json),
compiled -> canary ready (the canary's health on the version), canary ready -> fleet done (every device's health),
the last also as soak (canary ready -> fleet deployment created) and promotion -> fleet done. v1 is the first
rollout (each device installs the detector and its venv); v2 is an update (hot swap). Goal <= 30 s on 2 cores
(printed, not asserted).

Run alone: `.venv/bin/python -m benchmarks.bench_fleet` (needs mosquitto and `make wheelhouse`).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nacelle.components import WHEELHOUSE
from nacelle.local.edge.broker import find_mosquitto
from nacelle.local.runtime.stack import Stack
from nacelle.local.runtime.up import background_stack, wait_for
from nacelle.simulator.generate import generate_dataset
from nacelle.train_runner import run_training_job
from shared.ml.bundle import MANIFEST_FILE, input_shape, read_tar_documents
from shared.usecases.state_keys import group_pk

DEVICES = 10
GOAL_S = 30.0
TIMEOUT_S = 300.0
POLL_S = 0.1
HYPERPARAMETERS = {"epochs": 4, "max_train_windows": 6000, "patience": 2, "seed": 1, "dataset_hash": "f" * 64}


def _train(root: Path) -> bytes:
    generate_dataset(root / "data", 2, 1.0, "default", 3)
    result = run_training_job(root / "job", "nacelle-bench-fleet", {"train": root / "data"}, HYPERPARAMETERS,
                              echo=None)
    if not result.ok or result.model_archive is None:
        raise SystemExit(f"training failed: {result.failure_reason} (log {result.log_file})")
    return result.model_archive.read_bytes()


def _metadata(archive: bytes, token: str) -> dict[str, str]:
    """What training_completed registers (shared/usecases/registration.py) and compile/rollout read."""
    manifest = read_tar_documents(archive, (MANIFEST_FILE,))[MANIFEST_FILE]
    lineage = manifest.get("lineage", {})
    return {"nacelle:job": token, "nacelle:gate": "passed",
            "nacelle:dataset_hash": str(lineage.get("dataset_hash") or "-"),
            "nacelle:input_shape": " ".join(map(str, input_shape(manifest)))}


def _serving(stack: Stack, thing: str, version: int) -> bool:
    h = stack.state.get("devices", thing) or {}
    rate = float(h.get("inference_rate_hz") or 0.0)
    return str(h.get("model_version")) in (str(version), f"{version}.0.0") and rate > 0


def _until(predicate: Callable[[], Any], what: str) -> float:
    """perf_counter() when `predicate` first holds (polled every POLL_S)."""
    wait_for(predicate, TIMEOUT_S, what, interval_s=POLL_S)
    return time.perf_counter()


def _rollout(stack: Stack, archive_key: str, archive: bytes, label: str) -> dict[str, float]:
    group = stack.settings.group
    token = f"bench-fleet-{label}"
    version = stack.registry.register(group, archive_key, "PendingManualApproval", "bench_fleet",
                                      _metadata(archive, token), idempotency_token=token).version
    things = [f"turbine-{i:02d}" for i in range(1, DEVICES + 1)]
    manifest = f"compiled/{group}/{version}/{MANIFEST_FILE}"
    approved = time.perf_counter()
    approved_epoch = time.time()
    stack.registry.set_status(group, version, "Approved", "benchmark", "bench")
    compiled = _until(lambda: stack.store.exists(manifest), manifest)
    canary = _until(lambda: _serving(stack, things[0], version), f"the canary's health on v{version}")
    fleet = _until(lambda: all(_serving(stack, t, version) for t in things), f"every device's health on v{version}")
    record = stack.state.get(group_pk(group), f"rollout#{version}") or {}
    promoted = float(record.get("fleet_started_at") or 0.0) - approved_epoch + approved  # epoch -> perf_counter
    return {"approve_to_fleet_seconds": fleet - approved, "approve_to_compiled_seconds": compiled - approved,
            "compiled_to_canary_ready_seconds": canary - compiled, "canary_to_fleet_done_seconds": fleet - canary,
            "canary_soak_seconds": promoted - canary, "promotion_to_fleet_done_seconds": fleet - promoted}


def main() -> int:
    if find_mosquitto() is None or not any(WHEELHOUSE.glob("*.whl")):
        print(f"mosquitto or the wheelhouse ({WHEELHOUSE}, `make wheelhouse`) is missing: skipped", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        archive = _train(root)
        with background_stack(root / "home", devices=DEVICES) as stack:
            key = "jobs/nacelle-bench-fleet/output/model.tar.gz"
            stack.store.put_if_absent(key, archive)
            # a fleet that has been up: the devices' shared detector venv is built (fleet start-up does it)
            started = time.perf_counter()
            ready = _until(lambda: any((root / "home" / "greengrass" / "venvs").glob("*/.nacelle-complete")),
                           "the fleet's detector runtime")
            print(f"fleet_runtime_ready_seconds={ready - started:.1f}")
            print(f"fleet_devices={DEVICES}")
            print(f"approve_to_fleet_goal_seconds={GOAL_S:.0f}")
            print(f"canary_soak_setting_seconds={stack.settings.canary_soak_s:g}", flush=True)
            for label, suffix in (("v1", ""), ("v2", "_update")):
                figures = _rollout(stack, key, archive, label)
                for name, value in figures.items():
                    print(f"{name.replace('_seconds', suffix + '_seconds')}={value:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
