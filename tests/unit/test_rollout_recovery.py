"""Rollout recovery: notices sent at least once, starts and failures interrupted or racing, restores and rollbacks.

The same Harness as tests/unit/test_rollout.py (fakes and the local Greengrass stand-in); a crash is injected by
making one call of a fake raise once, then the event is delivered again, as Lambda's retries would.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.greengrass import LocalGreengrass
from services.deployment_status import app as status_app
from shared.components import MODEL_COMPONENT
from shared.usecases.approval import reject
from shared.usecases.approval_scope import APPROVAL_SCOPE
from shared.usecases.rollout_ops import rollback_to
from tests.unit.test_rollout import CANARY, CANARY_TIMEOUT, FLEET, GROUP, SOAK, STUCK_TIMEOUT, Harness, aws_status_event

PK = f"group#{GROUP}"


class Crash(RuntimeError):
    """A Lambda invocation dying mid-way (throttled store, timeout)."""


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def crash_once(obj: Any, name: str, when: Callable[..., bool]) -> None:
    """The first call of obj.name that `when` accepts raises Crash; every other call goes through."""
    real, armed = getattr(obj, name), [True]

    def call(*args: Any, **kwargs: Any) -> Any:
        if armed[0] and when(*args, **kwargs):
            armed[0] = False
            raise Crash(f"{name} failed")
        return real(*args, **kwargs)

    setattr(obj, name, call)


def crash_on_first_write(state: Any, key: str) -> None:
    """The first write of the item `key` (put or conditional update) raises Crash."""
    armed = [True]
    for name in ("put", "update_if"):
        real = getattr(state, name)

        def write(pk: str, sk: str, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            if armed[0] and sk == key:
                armed[0] = False
                raise Crash(f"writing {sk} failed")
            return _real(pk, sk, *args, **kwargs)

        setattr(state, name, write)


def versions(h: Harness, group: str) -> list[str]:
    return [d["components"][MODEL_COMPONENT]["componentVersion"] for d in h.deployments(group)]


def item(h: Harness, key: str) -> dict[str, Any]:
    return h.deps.state.get(PK, key) or {}


def redeliver(h: Harness, event: dict[str, Any]) -> str:
    return str(status_app.handle(copy.deepcopy(event), h.deps)["action"])


def count(h: Harness, subject: str) -> int:
    return h.alerts().count(subject)


# ------------------------------------------------------------------ notices: at least once


def test_a_failure_notice_refused_by_sns_is_sent_by_the_redelivery_once(h):
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    before = len(h.status_events)
    h.gg.report("turbine-01", h.rollout(2)["canary_deployment_id"], "FAILED", "detector crashed")
    event = h.status_events[before]
    h.notifier.refusals = 1
    with pytest.raises(ConnectionError):
        status_app.handle(copy.deepcopy(event), h.deps)
    assert h.rollout(2)["stage"] == "failed"
    assert [redeliver(h, event) for _ in range(3)] == ["recorded"] * 3
    h.clock.advance(60)
    assert h.check(2).action == "ignored"
    failed = [m for m in h.notifier.messages if m.subject == f"Rollout of {GROUP} v2 failed in the canary"]
    assert len(failed) == 1
    assert "detector crashed" in failed[0].message and "going back to v1" in failed[0].message


def test_a_failure_notice_refused_during_a_watchdog_check_is_sent_by_the_next_check(h):
    h.deliver_manifest(h.compile(1))
    h.clock.advance(CANARY_TIMEOUT + 1)
    h.notifier.refusals = 1
    with pytest.raises(ConnectionError):
        h.check(1)
    assert h.rollout(1)["stage"] == "failed" and h.alerts() == []
    assert h.check(1).action == "ignored"
    assert h.check(1).action == "ignored"
    assert h.alerts() == [f"Rollout of {GROUP} v1 failed in the canary"]


def test_the_hold_notice_refused_by_sns_is_sent_by_the_next_check(h):
    h.to_fleet_done(1)
    key = h.compile(2)
    h.deps.registry.update_metadata(GROUP, 2, {APPROVAL_SCOPE: "canary"})
    h.deliver_manifest(key)
    h.report("turbine-01", h.rollout(2)["canary_deployment_id"], "SUCCEEDED")
    h.notifier.refusals = 1
    with pytest.raises(ConnectionError):
        h.soak(2)
    assert h.rollout(2)["canary_passed_at"] is not None
    assert [h.check(2).action for _ in range(2)] == ["waiting", "waiting"]
    assert count(h, f"{GROUP} v2 passed the canary: approve it to roll it out to the fleet") == 1


def test_the_promotion_notice_of_a_promotion_resumed_by_the_watchdog_is_sent(h):
    h.deliver_manifest(h.compile(1))
    h.report("turbine-01", h.rollout(1)["canary_deployment_id"], "SUCCEEDED")
    crash_once(h.gg, "things_in_group", lambda group: group == FLEET)
    with pytest.raises(Crash):
        h.soak(1)
    assert h.rollout(1)["stage"] == "fleet" and h.rollout(1)["fleet_deployment_id"] == ""
    h.clock.advance(30)
    assert [h.check(1).action for _ in range(2)] == ["waiting", "waiting"]
    passed = [m for m in h.notifier.messages if m.subject == f"{GROUP} v1 passed the canary: deploying to the fleet"]
    assert len(passed) == 1 and h.rollout(1)["fleet_deployment_id"] in passed[0].message


def test_the_promotion_and_done_notices_refused_by_sns_are_sent_by_redeliveries(h):
    h.deliver_manifest(h.compile(1))
    h.report("turbine-01", h.rollout(1)["canary_deployment_id"], "SUCCEEDED")
    h.notifier.refusals = 1
    with pytest.raises(ConnectionError):
        h.soak(1)
    assert h.rollout(1)["stage"] == "fleet"
    fleet_id = h.rollout(1)["fleet_deployment_id"]
    h.report("turbine-02", fleet_id, "SUCCEEDED")  # any later event of the rollout sends it
    assert h.alerts() == [f"{GROUP} v1 passed the canary: deploying to the fleet"]
    before = len(h.status_events)
    h.gg.report("turbine-03", fleet_id, "SUCCEEDED")
    h.notifier.refusals = 1
    with pytest.raises(ConnectionError):
        status_app.handle(copy.deepcopy(h.status_events[before]), h.deps)
    assert h.rollout(1)["stage"] == "done"
    assert redeliver(h, h.status_events[before]) == "recorded"
    assert redeliver(h, h.status_events[before]) == "recorded"
    assert h.alerts() == [f"{GROUP} v1 passed the canary: deploying to the fleet", f"{GROUP} v1 is on the whole fleet"]


def test_the_not_promoted_notice_refused_by_sns_is_sent_by_the_next_check(h):
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    reject(h.deps.registry, GROUP, 2, "bob", "bad model")
    h.notifier.refusals = 1
    with pytest.raises(ConnectionError):
        h.soak(2)
    assert h.check(2).action == "waiting"
    notices = [m for m in h.notifier.messages if "not promoted" in m.subject]
    assert [m.subject for m in notices] == [f"{GROUP} v2 soaked on the canary but is Rejected: not promoted"]
    assert notices[0].message.startswith("v2 is Rejected, so it is not deployed")


def test_the_stuck_notice_refused_by_sns_is_sent_by_the_next_check_once(h):
    h.deliver_manifest(h.compile(1))
    h.report("turbine-01", h.rollout(1)["canary_deployment_id"], "SUCCEEDED")
    h.soak(1)
    h.report("turbine-02", h.rollout(1)["fleet_deployment_id"], "SUCCEEDED")
    h.clock.advance(STUCK_TIMEOUT + 1)
    h.notifier.refusals = 1
    with pytest.raises(ConnectionError):
        h.check(1)
    assert [h.check(1).action for _ in range(2)] == ["waiting", "waiting"]
    stuck = [m for m in h.notifier.messages if "stuck" in m.subject]
    assert len(stuck) == 1 and "on turbine-03" in stuck[0].message and "turbine-02" not in stuck[0].message


def test_the_waiting_notice_refused_by_sns_is_sent_by_the_redelivery(tmp_path: Path):
    h = Harness(tmp_path)  # on a stand-in without devices
    h.gg = LocalGreengrass(tmp_path / "empty.db", on_status_event=h.status_events.append, clock=h.clock)
    h.deps = replace(h.deps, greengrass=h.gg)
    key = h.compile(1)
    h.notifier.refusals = 1
    with pytest.raises(ConnectionError):
        h.deliver_manifest(key)
    assert h.rollout(1)["stage"] == "waiting"
    assert [h.deliver_manifest(key)["action"] for _ in range(2)] == ["waiting", "waiting"]
    assert h.alerts() == [f"{GROUP} v1 waits for devices"]


def test_a_rollout_stored_before_notices_were_noted_is_not_announced_again(h):
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    h.report("turbine-01", h.rollout(2)["canary_deployment_id"], "FAILED", "boom")
    sent = len(h.alerts())
    for version in (1, 2):  # as an earlier version of the code stored them
        stored = h.rollout(version)
        h.deps.state.put(PK, f"rollout#{version}", {k: v for k, v in stored.items() if k != "notified"})
    assert (h.check(1).action, h.check(2).action) == ("ignored", "ignored")
    assert redeliver(h, h.status_events[-1]) == "recorded"
    assert len(h.alerts()) == sent


def test_a_rollout_stored_before_notices_were_noted_notes_them_from_its_next_check(h):
    h.deliver_manifest(h.compile(1))
    stored = h.rollout(1)
    h.deps.state.put(PK, "rollout#1", {k: v for k, v in stored.items() if k != "notified"})
    assert h.check(1).action == "waiting" and h.rollout(1)["notified"] == []
    h.report("turbine-01", h.rollout(1)["canary_deployment_id"], "FAILED", "boom")
    assert h.alerts() == [f"Rollout of {GROUP} v1 failed in the canary"]


def test_the_rollback_notice_refused_by_sns_is_sent_when_the_operator_retries(h):
    h.to_fleet_done(1)
    h.to_fleet_done(2)
    h.notifier.refusals = 1
    with pytest.raises(ConnectionError):
        rollback_to(1, h.deps)
    assert rollback_to(1, h.deps).action == "duplicate"
    assert rollback_to(1, h.deps).action == "duplicate"
    assert count(h, f"{GROUP} rolled back to v1") == 1
    assert len(h.deployments(FLEET)) == 3  # one rollback deployment per group


# ------------------------------------------------------------------ a canary start interrupted or racing


def _v2_soaking(h: Harness) -> None:
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    h.report("turbine-01", h.rollout(2)["canary_deployment_id"], "SUCCEEDED")


def test_a_canary_start_interrupted_after_its_claim_is_finished_by_the_redelivery(h):
    _v2_soaking(h)
    key = h.compile(3)
    crash_on_first_write(h.deps.state, "canary")
    with pytest.raises(Crash):
        h.deliver_manifest(key)
    assert h.rollout(3)["stage"] == "canary" and item(h, "canary")["version"] == 2
    assert h.deliver_manifest(key)["action"] == "duplicate"
    assert (h.rollout(2)["stage"], h.rollout(3)["stage"]) == ("superseded", "canary")
    assert item(h, "canary") == {"pk": PK, "sk": "canary", "version": 3,
                                 "deployment_id": h.rollout(3)["canary_deployment_id"]}
    assert any(p.event.detail.get("version") == 3 for p in h.events.published)  # its watchdog
    assert versions(h, CANARY) == ["1.0.0", "2.0.0", "3.0.0"]
    h.report("turbine-01", h.rollout(3)["canary_deployment_id"], "SUCCEEDED")
    h.soak(3)
    assert h.rollout(3)["stage"] == "fleet" and versions(h, FLEET)[-1] == "3.0.0"


@pytest.mark.parametrize("first", ["redelivery", "older watchdog"])
def test_a_canary_start_interrupted_before_superseding_the_older_canary_never_fails_it(h, first):
    _v2_soaking(h)
    key = h.compile(3)
    crash_once(h.deps.state, "update_if",
               lambda pk, sk, changes, expected: sk == "rollout#2" and changes.get("stage") == "superseded")
    with pytest.raises(Crash):
        h.deliver_manifest(key)
    assert (h.rollout(2)["stage"], h.rollout(3)["stage"]) == ("canary", "canary")
    h.clock.advance(CANARY_TIMEOUT + 1)  # v2's own watchdog comes past its canary timeout
    if first == "redelivery":
        assert h.deliver_manifest(key)["action"] == "duplicate"
    assert h.check(2).action == "ignored"
    assert h.deliver_manifest(key)["action"] == "duplicate"
    assert (h.rollout(2)["stage"], h.rollout(3)["stage"]) == ("superseded", "canary")
    assert not h.deps.registry.get(GROUP, 2).failed and h.alerts()[-1] == f"{GROUP} v1 is on the whole fleet"
    assert versions(h, CANARY) == ["1.0.0", "2.0.0", "3.0.0"] and item(h, "canary")["version"] == 3
    assert any(p.event.detail.get("version") == 3 for p in h.events.published)


def test_two_bundles_handled_concurrently_leave_the_newer_version_on_the_canary(h):
    key1, key2 = h.compile(1), h.compile(2)
    real = h.gg.create_deployment
    answers: list[str] = []

    def interleaved(target_arn: str, name: str, *args: Any, **kwargs: Any) -> str:
        if name.endswith("-v1-canary") and not answers:  # v2's invocation runs while v1's creates its deployment
            answers.append(h.deliver_manifest(key2)["action"])
        return str(real(target_arn, name, *args, **kwargs))

    h.gg.create_deployment = interleaved
    assert h.deliver_manifest(key1)["action"] == "superseded"
    assert answers == ["deployed"]
    assert (h.rollout(1)["stage"], h.rollout(2)["stage"]) == ("superseded", "canary")
    assert versions(h, CANARY) == ["2.0.0", "1.0.0", "2.0.0"]  # v1's went out last: v2 is deployed again
    assert item(h, "canary") == {"pk": PK, "sk": "canary", "version": 2,
                                 "deployment_id": h.rollout(2)["canary_deployment_id"]}
    assert h.deployments(CANARY)[-1]["id"] == h.rollout(2)["canary_deployment_id"]
    h.report("turbine-01", h.rollout(2)["canary_deployment_id"], "SUCCEEDED")
    h.soak(2)
    assert versions(h, FLEET) == ["2.0.0"] and h.rollout(2)["stage"] == "fleet"


# ------------------------------------------------------------------ failures: what is restored


def test_a_fleet_failure_never_restores_a_version_marked_failed(h):
    h.deliver_manifest(h.compile(1))
    h.report("turbine-01", h.rollout(1)["canary_deployment_id"], "SUCCEEDED")
    h.soak(1)
    h.report("turbine-02", h.rollout(1)["fleet_deployment_id"], "FAILED", "v1 broke on the fleet")
    h.deliver_manifest(h.compile(2))
    h.report("turbine-01", h.rollout(2)["canary_deployment_id"], "SUCCEEDED")
    h.soak(2)
    h.report("turbine-03", h.rollout(2)["fleet_deployment_id"], "FAILED", "v2 broke too")
    assert h.rollout(2)["stage"] == "failed"
    assert "1.0.0" not in versions(h, CANARY)[1:] and versions(h, FLEET) == ["1.0.0", "2.0.0"]
    (notice,) = [m for m in h.notifier.messages if m.subject == f"Rollout of {GROUP} v2 failed in the fleet"]
    assert "nothing was restored" in notice.message and "deployment was canceled" in notice.message


def test_a_fleet_failure_never_restores_a_rejected_version_and_takes_the_newest_good_one(h):
    h.to_fleet_done(1)
    h.to_fleet_done(2)
    reject(h.deps.registry, GROUP, 2, "bob", "v2 misses faults; do not run it")
    h.deliver_manifest(h.compile(3))
    h.report("turbine-01", h.rollout(3)["canary_deployment_id"], "SUCCEEDED")
    h.soak(3)
    h.report("turbine-03", h.rollout(3)["fleet_deployment_id"], "FAILED", "boom")
    assert (versions(h, CANARY)[-1], versions(h, FLEET)[-1]) == ("1.0.0", "1.0.0")
    assert (item(h, "canary")["version"], item(h, "fleet")["version"]) == (1, 1)
    (notice,) = [m for m in h.notifier.messages if m.subject == f"Rollout of {GROUP} v3 failed in the fleet"]
    assert "Both thing groups are going back to v1" in notice.message


def test_a_canary_failure_with_only_a_rejected_earlier_version_cancels_and_says_so(h):
    h.to_fleet_done(1)
    reject(h.deps.registry, GROUP, 1, "bob", "no")
    h.deliver_manifest(h.compile(2))
    canary_id = h.rollout(2)["canary_deployment_id"]
    h.report("turbine-01", canary_id, "FAILED", "boom")
    assert versions(h, CANARY) == ["1.0.0", "2.0.0"] and h.gg.get_deployment(canary_id).status == "CANCELED"
    (notice,) = [m for m in h.notifier.messages if "failed in the canary" in m.subject]
    assert "No earlier version is approved, compiled and not failed" in notice.message


def test_a_resumed_failure_leaves_a_newer_canary_in_place(h):
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    crash_once(h.deps.registry, "update_metadata", lambda *a: True)
    with pytest.raises(Crash):
        h.report("turbine-01", h.rollout(2)["canary_deployment_id"], "FAILED", "detector crashed")
    assert h.rollout(2)["stage"] == "failing"
    assert h.deliver_manifest(h.compile(3))["action"] == "deployed"
    h.clock.advance(30)
    assert h.check(2).action == "failed"
    assert versions(h, CANARY) == ["1.0.0", "2.0.0", "3.0.0"]
    assert item(h, "canary")["version"] == 3 and h.rollout(3)["stage"] == "canary"
    assert h.deps.registry.get(GROUP, 2).failed
    (notice,) = [m for m in h.notifier.messages if "v2 failed" in m.subject]
    assert "nothing was restored" in notice.message
    h.report("turbine-01", h.rollout(3)["canary_deployment_id"], "SUCCEEDED")
    h.soak(3)
    assert h.rollout(3)["stage"] == "fleet" and not h.deps.registry.get(GROUP, 3).failed


def test_a_restore_racing_a_newer_canary_deploys_that_canary_again(h):
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    h.deps.state.update_if(PK, "rollout#2", {"stage": "failing", "failed_stage": "canary",
                                             "failure_reason": "turbine-01 reported FAILED"}, {"stage": "canary"})
    key3, real = h.compile(3), h.gg.create_deployment
    started: list[str] = []

    def interleaved(target_arn: str, name: str, *args: Any, **kwargs: Any) -> str:
        if "restore-after-2" in name and not started:  # v3 starts between the restore's decision and its deployment
            started.append(h.deliver_manifest(key3)["action"])
        return str(real(target_arn, name, *args, **kwargs))

    h.gg.create_deployment = interleaved
    assert h.check(2).action == "failed" and started == ["deployed"]
    assert versions(h, CANARY) == ["1.0.0", "2.0.0", "3.0.0", "1.0.0", "3.0.0"]
    assert item(h, "canary") == {"pk": PK, "sk": "canary", "version": 3,
                                 "deployment_id": h.rollout(3)["canary_deployment_id"]}
    assert h.deployments(CANARY)[-1]["id"] == h.rollout(3)["canary_deployment_id"]
    (notice,) = [m for m in h.notifier.messages if "v2 failed" in m.subject]
    assert "nothing was restored" in notice.message


# ------------------------------------------------------------------ restores and rollbacks that fail on a device


def test_a_failed_restore_deployment_is_notified_once_at_least_once(h):
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    h.report("turbine-01", h.rollout(2)["canary_deployment_id"], "FAILED", "v2 broke")
    restore = item(h, "canary")["deployment_id"]
    before = len(h.status_events)
    h.gg.report("turbine-01", restore, "FAILED", "restore broke")
    event = h.status_events[before]
    h.notifier.refusals = 1
    with pytest.raises(ConnectionError):
        status_app.handle(copy.deepcopy(event), h.deps)
    assert [redeliver(h, event) for _ in range(2)] == ["recorded", "recorded"]
    notices = [m for m in h.notifier.messages if m.subject == f"{GROUP}: the restore to v1 failed on a device"]
    assert len(notices) == 1 and "turbine-01 reported FAILED: restore broke" in notices[0].message
    assert restore in notices[0].message


def test_a_failed_rollback_deployment_is_notified_and_a_retry_deploys_again(h):
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    h.report("turbine-01", h.rollout(2)["canary_deployment_id"], "SUCCEEDED")
    h.soak(2)
    first = rollback_to(1, h.deps).data["deployments"]
    assert [r["action"] for r in h.report("turbine-02", first["fleet"], "FAILED", "cannot install v1")] == ["alerted"]
    assert count(h, f"{GROUP}: the rollback to v1 failed on a device") == 1
    again = rollback_to(1, h.deps)
    assert again.action == "rolled-back" and again.data["deployments"]["fleet"] != first["fleet"]
    assert versions(h, FLEET)[-1] == "1.0.0" and item(h, "fleet")["deployment_id"] == again.data["deployments"]["fleet"]
    assert rollback_to(1, h.deps).action == "duplicate"
    assert count(h, f"{GROUP} rolled back to v1") == 2


# ------------------------------------------------------------------ rollbacks racing the rollout


def test_a_rollback_interrupted_while_superseding_is_completed_by_the_retry(h):
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    crash_once(h.deps.state, "update_if",
               lambda pk, sk, changes, expected: sk == "rollout#2" and changes.get("stage") == "superseded")
    with pytest.raises(Crash):
        rollback_to(1, h.deps)
    assert versions(h, FLEET) == ["1.0.0"]  # nothing deployed before the newer rollouts are superseded
    assert rollback_to(1, h.deps).action == "rolled-back"
    assert h.rollout(2)["stage"] == "superseded" and count(h, f"{GROUP} rolled back to v1") == 1
    h.soak(1)
    h.clock.advance(CANARY_TIMEOUT + 1)
    assert h.check(2).action == "ignored" and not h.deps.registry.get(GROUP, 2).failed


def test_a_promotion_racing_a_rollback_never_reaches_the_fleet(h):
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    h.report("turbine-01", h.rollout(2)["canary_deployment_id"], "SUCCEEDED")
    t0 = h.clock.now.timestamp() + 1
    for dt in (0.0, SOAK / 2):
        status_app.handle(h.health("turbine-01", 2, 4.0, t0 + dt), h.deps)
    last = h.health("turbine-01", 2, 4.0, t0 + SOAK + 1)  # the row that completes the soak, in flight
    h.clock.advance(SOAK + 2)
    real, answers = h.gg.create_deployment, list[str]()

    def interleaved(target_arn: str, name: str, *args: Any, **kwargs: Any) -> str:
        deployment = str(real(target_arn, name, *args, **kwargs))
        if "rollback" in name and name.endswith("-fleet") and not answers:
            answers.append(status_app.handle(last, h.deps)["action"])
        return deployment

    h.gg.create_deployment = interleaved
    assert rollback_to(1, h.deps).action == "rolled-back"
    assert answers == ["recorded"]
    assert versions(h, FLEET) == ["1.0.0", "1.0.0"] and h.rollout(2)["stage"] == "superseded"
    assert (item(h, "fleet")["version"], item(h, "fleet")["kind"]) == (1, "rollback-2")
    assert rollback_to(1, h.deps).action == "duplicate"


def test_a_rollback_retried_after_a_newer_canary_started_deploys_again(h):
    h.to_fleet_done(1)
    h.to_fleet_done(2)
    rollback_to(1, h.deps)
    h.deliver_manifest(h.compile(3))
    assert rollback_to(1, h.deps).action == "rolled-back"
    assert h.rollout(3)["stage"] == "superseded" and versions(h, CANARY)[-1] == "1.0.0"


# ------------------------------------------------------------------ devices outside the stage


@pytest.mark.parametrize("thing", ["turbine-99", "turbine-02"])
def test_a_failure_from_a_device_outside_the_stage_is_recorded_only(h, thing):
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    canary_id = h.rollout(2)["canary_deployment_id"]
    result = status_app.handle(aws_status_event("greengrass_deployment_failed.json", canary_id, thing), h.deps)
    assert result["action"] == "recorded" and "not one of the canary deployment's devices" in result["detail"]
    assert h.rollout(2)["stage"] == "canary" and not h.deps.registry.get(GROUP, 2).failed
    assert h.deps.state.get(f"device#{thing}", f"deployment#{canary_id}")["status"] == "FAILED"
