"""Rollout end to end on the real local stack: mosquitto with mutual TLS, the IoT rule engine, two simulated core
devices (turbine-01 canary, turbine-02 fleet) running the real detector, and the rollout use cases on the bus.

One stack for the module; the tests run in file order and build on each other: v1 rolls out to both devices (a),
a redelivered manifest changes nothing (c), a bundle with a wrong inner digest (v2) is refused before any component
is made (b), and a canary nucleus killed while applying v3 comes back and converges (d). The model is the session's
`trained_model`, registered directly (no training through the stack).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nacelle.cli import main
from nacelle.components import WHEELHOUSE
from nacelle.local.adapters.objectstore import FsObjectStore
from nacelle.local.adapters.paths import BUCKET
from nacelle.local.edge.broker import find_mosquitto
from nacelle.train_runner import JobResult
from shared.components import DETECTOR_COMPONENT, MODEL_COMPONENT
from shared.ml.bundle import MANIFEST_FILE
from shared.usecases.state_keys import group_pk
from tests.integration.conftest import wait_for
from tests.integration.rollout_env import GROUP, RolloutEnv, rollout_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed (apt-get install -y mosquitto)"),
    pytest.mark.skipif(not any(WHEELHOUSE.glob("*.whl")),
                       reason=f"{WHEELHOUSE} has no wheels: run `make wheelhouse` (the detector component needs it)"),
]

CANARY, FLEET = "turbine-01", "turbine-02"
SOAK_S = 4.0  # the local default is 10 s; the soak logic is the same
WAIT_S = 90.0


class Env(RolloutEnv):
    def components(self, thing: str) -> dict[str, str]:
        return next(dict(d.components) for d in self.stack.greengrass.devices() if d.thing == thing)

    def execution(self, deployment_id: str, thing: str) -> str | None:
        return next((e.status for e in self.stack.greengrass.executions(deployment_id) if e.thing == thing), None)

    def count(self, sql: str, *args: Any) -> int:
        db = sqlite3.connect(self.stack.paths.greengrass_db)
        try:
            return int(db.execute(sql, args).fetchone()[0])
        finally:
            db.close()

    def deployments(self) -> int:
        return self.count("SELECT COUNT(*) FROM deployments")

    def deliveries(self, target: str, **detail: Any) -> list[Any]:
        """Deliveries to `target` of events whose detail has these (top-level) values, oldest first."""
        out = []
        for d in self.stack.bus.deliveries():
            if d.target == target:
                got = self.stack.bus.event(d.event_id).get("detail", {})
                if all(got.get(k) == v for k, v in detail.items()):
                    out.append(d)
        return out

    def manifest_deliveries(self, key: str) -> list[Any]:
        """Deliveries of `Object Created` events for `key` to compilation_completed."""
        return [d for d in self.deliveries("CompilationCompletedFunction")
                if self.stack.bus.event(d.event_id)["detail"].get("object", {}).get("key") == key]

    def notifications(self) -> list[dict[str, Any]]:
        path = self.home / "notifications.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    def logs(self, thing: str) -> str:
        root = self.home / "devices" / thing / "logs"
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(root.glob("*.log")))


def manifest_key(version: int) -> str:
    return f"compiled/{GROUP}/{version}/{MANIFEST_FILE}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, trained_model: JobResult) -> Iterator[Env]:
    with rollout_env(Env, tmp_path_factory.mktemp("fleet") / "home", trained_model, "fleet rollout test", SOAK_S,
                     devices=2) as env:
        yield env


def test_a_approving_a_version_rolls_it_out_canary_first_then_the_fleet(env: Env, capsys: pytest.CaptureFixture[str]):
    version = env.register("fleet-test-v1")
    assert version == 1
    env.approve(1)  # nothing else: compile -> components -> canary -> soak -> fleet
    wait_for(lambda: env.rollout(1).get("stage") == "done", WAIT_S,
             f"v1 done on the fleet (rollout {env.rollout(1)}; logs:\n{env.logs(CANARY)})")
    wait_for(lambda: env.serving(CANARY, 1) and env.serving(FLEET, 1), 20, "both devices' health on v1")

    assert env.stack.greengrass.get_component(MODEL_COMPONENT, "1.0.0") is not None
    record = env.rollout(1)
    canary = env.stack.greengrass.get_deployment(record["canary_deployment_id"])
    fleet = env.stack.greengrass.get_deployment(record["fleet_deployment_id"])
    assert canary.name == f"nacelle-{GROUP}-v1-canary" and canary.target_arn.endswith("/nacelle-canary")
    assert fleet.name == f"nacelle-{GROUP}-v1-fleet" and fleet.target_arn.endswith("/nacelle-fleet")
    assert canary.created_at is not None and fleet.created_at is not None and canary.created_at <= fleet.created_at
    assert float(record["fleet_started_at"]) - float(record["canary_started_at"]) >= SOAK_S  # soaked first
    assert canary.components[MODEL_COMPONENT] == {"componentVersion": "1.0.0"}
    assert env.execution(canary.deployment_id, CANARY) == "SUCCEEDED"
    assert env.execution(fleet.deployment_id, FLEET) == "SUCCEEDED"
    assert env.execution(canary.deployment_id, FLEET) is None  # the fleet device only ever got the fleet deployment

    capsys.readouterr()
    assert main(["--data-dir", str(env.home), "fleet", "status", "--json"]) == 0
    rows = {r["thing"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {CANARY, FLEET}
    for thing, group, deployment in ((CANARY, "nacelle-canary", canary), (FLEET, "nacelle-fleet", fleet)):
        row = rows[thing]
        assert row["groups"] == [group]
        assert row["components"][MODEL_COMPONENT] == "1.0.0" and DETECTOR_COMPONENT in row["components"]
        assert row["deployment"]["id"] == deployment.deployment_id
        assert row["deployment"]["status"] == "SUCCEEDED"
        assert str(row["model_version"]) in ("1", "1.0.0") and row["inference_rate_hz"] > 0
        assert row["processes"]["nucleus"] == "running"


def test_c_a_redelivered_manifest_creates_nothing_more(env: Env):
    key = manifest_key(1)
    before = len(env.manifest_deliveries(key))
    deployments = env.deployments()
    data = env.stack.store.get(key)
    for _ in range(2):
        env.stack.store.put(key, data, "application/json")  # two more Object Created events, same bytes
    wait_for(lambda: [d.status for d in env.manifest_deliveries(key)[before:]] == ["done", "done"], 30,
             "both redelivered manifest events handled")
    assert env.deployments() == deployments
    assert env.count("SELECT COUNT(*) FROM components WHERE name = ?", MODEL_COMPONENT) == 1
    assert env.rollout(1)["stage"] == "done"


def test_b_a_bundle_with_a_wrong_inner_digest_is_refused_before_any_component_is_made(env: Env):
    store = env.stack.store
    v1, v2 = f"compiled/{GROUP}/1/", f"compiled/{GROUP}/2/"
    files = [o.key.removeprefix(v1) for o in store.list(v1) if not o.key.endswith(MANIFEST_FILE)]
    assert "model.onnx" in files
    for name in files:  # v1's bundle with other model.onnx bytes: the manifest's sha256 no longer matches
        data = store.get(v1 + name)
        store.put(v2 + name, data + b"\0corrupt" if name == "model.onnx" else data)
    manifest = store.get(v1 + MANIFEST_FILE)
    store.put(v2 + MANIFEST_FILE, manifest, "application/json")  # last, as the compile job does
    assert env.register("fleet-test-v2") == 2
    env.approve(2)  # model_approved finds the manifest and compiles nothing
    wait_for(lambda: [d.status for d in env.deliveries("ModelApprovedFunction", ModelPackageVersion=2,
                                                        ModelApprovalStatus="Approved")] == ["done"],
             30, "model_approved to handle v2's approval")
    assert env.stack.state.get(group_pk(GROUP), "compile#2") is None  # the existing manifest: no compile
    deployments = env.deployments()
    store.put(v2 + MANIFEST_FILE, manifest, "application/json")  # compilation_completed gets its Object Created

    def refused() -> list[Any]:
        return [d for d in env.manifest_deliveries(manifest_key(2)) if "BundleError" in (d.last_error or "")]

    wait_for(refused, 30, "compilation_completed to refuse v2's artifacts")
    # an error to retry (the right model.onnx may still land), not a conflict: nothing made, nothing deployed
    assert all(d.status != "done" and "Conflict" not in (d.last_error or "") for d in refused())
    assert env.stack.greengrass.get_component(MODEL_COMPONENT, "2.0.0") is None
    assert not store.exists(f"components/{MODEL_COMPONENT}/2.0.0/bundle.zip")
    assert env.deployments() == deployments and env.rollout(2).get("stage") is None
    assert not [n for n in env.notifications() if n["attributes"].get("model_version") == "2"]
    assert env.components(CANARY)[MODEL_COMPONENT] == env.components(FLEET)[MODEL_COMPONENT] == "1.0.0"
    assert env.serving(CANARY, 1) and env.serving(FLEET, 1)


def test_d_a_device_killed_while_applying_comes_back_and_converges(env: Env):
    assert env.register("fleet-test-v3") == 3
    pid = env.nucleus_pid(CANARY)
    _stop_outside_transactions(pid, [env.stack.paths.greengrass_db, env.stack.paths.bus_db])
    # stopped, it takes the deployment only once its bundle download is held
    try:
        env.approve(3)  # a real compile this time (the bundle must say model_version 3)
        deployment = wait_for(lambda: env.rollout(3).get("canary_deployment_id"), WAIT_S, "v3's canary deployment")
        bundle = FsObjectStore(env.home / "objects", BUCKET).path(f"components/{MODEL_COMPONENT}/3.0.0/bundle.zip")
        kept = bundle.with_name("kept.zip")
        bundle.replace(kept)
        os.mkfifo(bundle)  # reading it blocks: the download hangs mid-apply
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: env.execution(deployment, CANARY) == "IN_PROGRESS", 30, "the canary applying v3")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in _proc_state(pid), 10, "the nucleus gone")
    kept.replace(bundle)
    state = json.loads((env.home / "devices" / CANARY / "state.json").read_text())
    assert state["pending"] == deployment  # it died with the deployment unfinished

    wait_for(lambda: env.nucleus_pid(CANARY) != pid, 30, "the fleet to restart the canary's nucleus")
    wait_for(lambda: env.execution(deployment, CANARY) == "SUCCEEDED", WAIT_S,
             f"the restarted canary to finish v3 (logs:\n{env.logs(CANARY)})")
    assert env.components(CANARY)[MODEL_COMPONENT] == "3.0.0"
    wait_for(lambda: env.serving(CANARY, 3), 30, "the canary's health on v3")
    assert env.rollout(3)["stage"] in ("canary", "fleet", "done")


def _stop_outside_transactions(pid: int, dbs: list[Path]) -> None:
    """SIGSTOP the process at a moment it holds no write lock on these databases: stopped inside a transaction,
    it would hold every other writer of the stack until it resumes."""
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        if all(_writable(db) for db in dbs):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"process {pid} kept a write lock on {dbs} at every try")


def _writable(db: Path) -> bool:
    conn = sqlite3.connect(db, timeout=0.2, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:  # "database is locked"
        return False
    finally:
        conn.close()


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
