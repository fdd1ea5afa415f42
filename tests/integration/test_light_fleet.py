"""Light devices on the real local stack: 1 full device (turbine-01, nucleus + simulator processes) and 20 light
devices in one host process (nacelle/local/edge/light.py), mosquitto with mutual TLS, the IoT rules and the rollout
use cases. turbine-01 and the light turbine-02 form the canary group.

The tests run in file order on one stack: an approval reaches all 21 turbines, canary first (a); a light turbine's
certificate can neither publish as another turbine nor under another turbine's topics (b); a bundle whose model
cannot be loaded is refused by the light canary with Greengrass's error codes, the rollout fails and no fleet device
ever receives it (c); the light host killed with SIGKILL is restarted, its turbines resume their deployments and
every message they numbered reaches the cloud (d). The model is the session's `trained_model`, registered directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from benchmarks.device_attack import connect, health, publish
from nacelle.cli import main
from nacelle.components import WHEELHOUSE
from nacelle.local.edge.broker import find_mosquitto
from nacelle.local.edge.pki import LocalPki
from nacelle.train_runner import JobResult
from shared.components import DETECTOR_COMPONENT, MODEL_COMPONENT
from shared.ml.bundle import MANIFEST_FILE
from shared.usecases.intake import REJECTED, missing_messages
from tests.integration.conftest import wait_for
from tests.integration.rollout_env import GROUP, RolloutEnv, rollout_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed (apt-get install -y mosquitto)"),
    pytest.mark.skipif(not any(WHEELHOUSE.glob("*.whl")),
                       reason=f"{WHEELHOUSE} has no wheels: run `make wheelhouse` (the full device needs it)"),
]

DEVICES, FULL = 21, 1
THINGS = [f"turbine-{i:02d}" for i in range(1, DEVICES + 1)]
FULL_DEVICE, LIGHT_CANARY = THINGS[0], THINGS[1]
LIGHT = THINGS[FULL:]
SOAK_S = 2.0
WAIT_S = 90.0


class Env(RolloutEnv):
    def executions(self, deployment_id: str) -> dict[str, Any]:
        return {e.thing: e for e in self.stack.greengrass.executions(deployment_id)}

    def logs(self) -> str:
        host = self.home / "light" / "light-1" / "host.log"
        return host.read_text(errors="replace")[-3000:] if host.is_file() else "(no light host log)"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, trained_model: JobResult) -> Iterator[Env]:
    with rollout_env(Env, tmp_path_factory.mktemp("light") / "home", trained_model, "light fleet test", SOAK_S,
                     devices=DEVICES, full_devices=FULL, canary_size=2) as env:  # canary: 01 and 02
        yield env


def test_a_an_approval_reaches_the_full_and_the_light_devices(env: Env, capsys: pytest.CaptureFixture[str]):
    version = env.register("light-test-v1")
    env.approve(version)
    wait_for(lambda: env.rollout(version).get("stage") == "done", WAIT_S,
             f"v{version} done (rollout {env.rollout(version)}; light host log:\n{env.logs()})")
    wait_for(lambda: all(env.serving(t, version) for t in THINGS), 30,
             f"every turbine's health on v{version}: "
             f"{ {t: env.health(t).get('model_version') for t in THINGS if not env.serving(t, version)} }")
    record = env.rollout(version)
    canary, fleet = record["canary_deployment_id"], record["fleet_deployment_id"]
    assert sorted(record["canary_things"]) == [FULL_DEVICE, LIGHT_CANARY]
    assert float(record["fleet_started_at"]) - float(record["canary_started_at"]) >= SOAK_S
    assert {t: e.status for t, e in env.executions(canary).items()} == dict.fromkeys(record["canary_things"],
                                                                                      "SUCCEEDED")
    assert {t: e.status for t, e in env.executions(fleet).items()} == dict.fromkeys(THINGS[2:], "SUCCEEDED")

    capsys.readouterr()
    assert main(["--data-dir", str(env.home), "fleet", "status", "--json"]) == 0
    rows = {r["thing"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(THINGS)
    assert rows[FULL_DEVICE]["processes"]["nucleus"] == "running"
    for thing in LIGHT:
        row = rows[thing]
        assert row["processes"] == {"light": "running"}
        assert row["components"][MODEL_COMPONENT] == "1.0.0" and DETECTOR_COMPONENT in row["components"]
        assert row["messages_missing"] == {"health": 0} or not any(row["messages_missing"].values())
    stats = json.loads((env.home / "light" / "light-1" / "stats.json").read_text())
    assert stats["models_loaded"] == 1  # one ONNX Runtime session for the 20 light turbines


def test_b_a_light_turbines_certificate_cannot_act_as_another_turbine(env: Env):
    attacker, victim = THINGS[4], THINGS[5]
    port = int((env.home / "broker" / "port").read_text())
    broker = cast(Any, SimpleNamespace(pki=LocalPki(env.home / "pki"), port=port))  # the running stack's broker
    started = time.time()
    client = connect(broker, attacker, client_id=victim)  # the broker binds the session to the certificate's CN
    try:
        for stream in ("health", "anomalies", "stats"):
            assert publish(client, f"turbines/{victim}/{stream}", health(victim, 10**6, 999)) == "NOT_AUTHORIZED"
        # its own topic, another turbine's id: the broker passes it, the cloud refuses it
        assert publish(client, f"turbines/{attacker}/health", health(victim, 10**6, 999)) == "SUCCESS"
    finally:
        client.stop()
    refused = wait_for(lambda: env.stack.state.get(REJECTED, f"{attacker}#health"), 20, "the refused health")
    assert refused["by_reason"]["schema"] >= 1
    # the victim's own light session was never taken: its health keeps arriving, and nothing else in its name
    wait_for(lambda: float(env.health(victim).get("last_health_at") or 0) > started + 1, 20, "the victim's health")
    assert str(env.health(victim).get("model_version")) != "999" and env.serving(victim, 1)
    wait_for(lambda: env.serving(attacker, 1) and float(env.health(attacker).get("last_health_at") or 0) > time.time()
             - 3, 20, "the attacker's own detector back on its session")


def test_c_a_bundle_failing_verification_stops_at_the_light_canary(env: Env):
    store = env.stack.store
    v1, v2 = f"compiled/{GROUP}/1/", f"compiled/{GROUP}/2/"
    manifest = json.loads(store.get(v1 + MANIFEST_FILE))
    for name in [o.key.removeprefix(v1) for o in store.list(v1) if not o.key.endswith(MANIFEST_FILE)]:
        data = store.get(v1 + name)
        if name == "model.onnx":  # digests that match (the cloud checks them), bytes no runtime can load
            data = b"not an ONNX graph"
            manifest["edge"]["artifacts"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        store.put(v2 + name, data)
    store.put(v2 + MANIFEST_FILE, json.dumps(manifest).encode(), "application/json")  # last, as the compiler does
    assert env.register("light-test-v2") == 2
    # the full canary waits: its own FAILED would end the rollout (and cancel the deployment) before the light
    # canary's report, which is what this test is about
    full = env.pause_nucleus(FULL_DEVICE)
    try:
        env.approve(2)
        wait_for(lambda: env.rollout(2).get("canary_deployment_id"), WAIT_S, "the v2 canary deployment")
        canary = env.rollout(2)["canary_deployment_id"]
        wait_for(lambda: getattr(env.executions(canary).get(LIGHT_CANARY), "status", None) == "FAILED", WAIT_S,
                 f"the light canary's FAILED report (log:\n{env.logs()})")
    finally:
        os.kill(full, signal.SIGCONT)
    failed = env.executions(canary)[LIGHT_CANARY]
    assert "COMPONENT_BROKEN" in failed.error_stack and "fails verification" in failed.reason
    wait_for(lambda: env.rollout(2).get("stage") == "failed", WAIT_S,
             f"v2's rollout failed ({env.rollout(2)})")
    assert not env.rollout(2).get("fleet_deployment_id")
    time.sleep(2.0)
    assert all(env.serving(t, 1) for t in LIGHT)  # the light turbines kept v1 (ROLLBACK)
    components = {d.thing: dict(d.components) for d in env.stack.greengrass.devices()}
    assert components[LIGHT_CANARY][MODEL_COMPONENT] == "1.0.0"


def test_d_a_light_host_killed_with_sigkill_comes_back_and_no_message_is_lost(env: Env):
    def host_pid() -> int:
        return int(json.loads((env.home / "fleet.json").read_text())["light-1/light"]["pid"])

    def applied() -> dict[str, str]:
        return {t: json.loads((env.home / "devices" / t / "light.json").read_text())["applied"] for t in LIGHT}

    before, pid, killed_at = applied(), host_pid(), time.time()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: host_pid() != pid, 30, "the fleet to restart the light host")
    wait_for(lambda: all(env.serving(t, 1) and float(env.health(t).get("last_health_at") or 0) > killed_at + 1
                         for t in LIGHT), 60, f"every light turbine back on v1 (log:\n{env.logs()})")
    assert applied() == before  # back on the deployments it had applied, none applied again
    # every message numbered before and after the kill reached the cloud (unacknowledged ones were sent again)
    missing = {t: m for t in LIGHT if any((m := missing_messages(env.stack.state, t)).values())}
    assert missing == {}
