"""The mission end to end on the local stack: data drop -> pending model -> approval -> rollout to
2 simulated turbines -> a fault injected in turbine-01 -> alert, resolution -> operator ack -> label.

The operator works in the console the stack serves, in headless Chromium (tests/console/browser.py): approves on
the Models page, watches canary then fleet turn to the new version on the Fleet page, acknowledges the alert on
the Alerts page and opens the turbine's timeline; screenshots go to <data dir>/screenshots/. Without
/usr/bin/chromium the same steps go through the CLI (which tests/integration/test_local_cli.py and
tests/unit/test_alerts.py also cover).

Everything real: mosquitto with mutual TLS, the IoT rule engine, the nucleus processes installing the detector
component from the wheelhouse, turbine simulators at SPEED x real time (episode logic runs on sample timestamps,
so acceleration changes only how long we wait).
"""

from __future__ import annotations

import getpass
import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from nacelle.cli import main
from nacelle.commands import upload_keys
from nacelle.components import WHEELHOUSE
from nacelle.local.edge.broker import find_mosquitto
from nacelle.local.runtime.stack import Stack
from nacelle.simulator.device import SimPaths, request_fault
from shared.capture import CaptureName, capture_label_key, parse_capture_key
from shared.usecases import state_keys as sk
from shared.usecases.alerts import SEVERITIES, label_key, list_alerts
from tests.console.browser import CHROMIUM, browser_page, screenshot
from tests.integration.conftest import LENIENT_GATE, running_stack, wait_for, write_config

pytestmark = [
    pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240),
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed (apt-get install mosquitto)"),
    pytest.mark.skipif(not any(WHEELHOUSE.glob("*.whl")),
                       reason=f"{WHEELHOUSE} has no wheels: run `make wheelhouse` (devices install the detector "
                              "from it)"),
]
GROUP = "nacelle-turbine"
FAULTY, HEALTHY = "turbine-01", "turbine-02"
SPEED = 4.0  # stream seconds per wall-clock second
FAULT_S = 20.0  # stream seconds
WINDOW_S = 5.0  # mini-turbine spec: 100 samples at 20 Hz


def _model_on_devices(stack: Stack, version: int) -> dict[str, Any] | None:
    records = {r["sk"]: r for r in stack.state.query("devices")}
    ready = all(str(records.get(t, {}).get("model_version")) == str(version)  # the record keeps it as text
                and float(records[t].get("inference_rate_hz") or 0) > 0 for t in (FAULTY, HEALTHY))
    return records if ready else None


def _notes(stack: Stack, turbine: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    return [n for n in stack.notifier.tail(follow=False) if n["topic"] == "alerts"
            and (turbine is None or n["attributes"].get("turbine_id") == turbine)
            and (kind is None or n["attributes"].get("kind") == kind)]


def _approve_in_the_console(page: Any, home: Path, version: int) -> None:
    page.wait_for_selector(f"[data-testid=model-detail] >> text=v{version}")  # the pending version opens first
    page.fill("[data-testid=model-detail] [data-testid=reason]", "test")
    page.click("[data-testid=model-detail] button:has-text('Approve')")
    page.wait_for_selector("[data-testid=history] >> text=Approved")
    screenshot(page, home, "mission-models")


def _watch_the_rollout(page: Any, home: Path, version: int) -> None:
    """The Fleet page (polling by itself while the rollout runs) shows the canary, then the fleet, on `version`."""
    page.click("nav >> text=Fleet")
    for thing in (FAULTY, HEALTHY):  # turbine-01 is the canary, turbine-02 the fleet
        page.wait_for_selector(f"[data-testid=device-table] tr[data-key={thing}] >> text=v{version}", timeout=120_000)
    screenshot(page, home, "mission-fleet")


def _ack_in_the_console(page: Any, home: Path, alert_id: str) -> None:
    page.click("nav >> text=Alerts")
    page.click(f"[data-testid=alerts-table] tr[data-key='{alert_id}']")
    page.select_option("[data-testid=alert-detail] [data-testid=verdict]", "fault")
    page.click("[data-testid=alert-detail] button:has-text('Acknowledge')")
    page.wait_for_selector("[data-testid=ack-history] >> text=fault")
    screenshot(page, home, "mission-alerts")
    page.click(f"[data-testid=alert-detail] a:has-text('{FAULTY}')")
    page.wait_for_selector("[data-testid=timeline-chart] circle[data-kind=episode]")
    page.wait_for_selector("[data-testid=timeline-chart] line[data-kind=swap]", state="attached")  # 0 px wide
    screenshot(page, home, "mission-turbine")


def _captured(stack: Stack, thing: str, episode_id: str) -> tuple[str, CaptureName] | None:
    """The first file the device captured around the episode, once data_arrival accepted it."""
    for obj in stack.store.list(f"raw/capture/{thing}/"):
        parsed = parse_capture_key(obj.key)
        record = stack.state.get(sk.group_pk(GROUP), sk.FILE + obj.key) or {}
        if parsed is not None and parsed[1].episode_id == episode_id and record.get("status") == "accepted":
            return obj.key, parsed[1]
    return None


def _capture_label(stack: Stack, key: str) -> dict[str, Any] | None:
    label = capture_label_key(key)
    return json.loads(stack.store.get(label)) if stack.store.exists(label) else None


def test_data_drop_to_acknowledged_alert(tmp_path: Path, small_dataset: Path) -> None:
    home = tmp_path / "home"
    write_config(home, **LENIENT_GATE, canary_soak_s=2.0, rollout_poll_s=2.0, simulator_speed=SPEED,
                 detector_configuration={"healthIntervalSeconds": 1,
                                         "capture": {"episodeBeforeSeconds": 20, "episodeAfterSeconds": 4}})
    started = time.monotonic()
    marks: dict[str, float] = {}
    operator = getpass.getuser() if CHROMIUM.is_file() else "test-operator"
    with running_stack(home, devices=2) as stack, ExitStack() as browser:
        page = browser.enter_context(browser_page()) if CHROMIUM.is_file() else None
        # 1. data drop -> a model version waiting for approval, by itself
        for path, key in upload_keys([small_dataset]).files:
            stack.store.put_if_absent(key, path.read_bytes())
        (version,) = wait_for(lambda: stack.registry.list(GROUP), 120, "a registered model version")
        assert version.status == "PendingManualApproval"
        marks["pending"] = time.monotonic() - started

        # 2. approval -> compile -> canary (turbine-01) -> fleet (turbine-02): both report the version
        if page is not None:
            assert stack.console_url is not None
            page.goto(stack.console_url)
            _approve_in_the_console(page, home, version.version)
            _watch_the_rollout(page, home, version.version)
        else:
            assert main(["--data-dir", str(home), "models", "approve", str(version.version), "--reason", "test"]) == 0
        assert [h["actor"] for h in stack.registry.history(GROUP, version.version)][-1] == operator
        wait_for(lambda: _model_on_devices(stack, version.version), 120,
                 f"both devices' health to report model v{version.version}")
        marks["deployed"] = time.monotonic() - started
        assert _notes(stack) == [], "no alert before the fault (a false alarm on a healthy stream)"

        # 3. a fault in turbine-01 -> one alert for it, then its resolution when the episode closes
        request_fault(home, FAULTY, "rotor_imbalance", "high", FAULT_S)
        wait_for(lambda: SimPaths.of(home, FAULTY).labels.is_file(), 10, "the simulator to inject the fault")
        (label,) = [json.loads(line) for line in SimPaths.of(home, FAULTY).labels.read_text().splitlines()]
        (alert,) = wait_for(lambda: _notes(stack, FAULTY, "alert"), 30, "the alert for turbine-01")
        marks["alert"] = time.monotonic() - started
        attrs = alert["attributes"]
        assert attrs["severity"] in SEVERITIES
        assert json.loads(attrs["features"]), "the alert names the deviating features"
        assert alert["subject"].startswith(f"[{attrs['severity'].upper()}]") and FAULTY in alert["subject"]
        (resolution,) = wait_for(lambda: _notes(stack, FAULTY, "resolution"), 30, "the resolution")
        marks["resolved"] = time.monotonic() - started

        (item,) = [i for i in list_alerts(stack.alert_deps()) if i["turbine_id"] == FAULTY]
        assert item["alert_message_id"] == alert["id"] and item["resolution_message_id"] == resolution["id"]
        assert item["status"] == "closed" and item["model_version"] == version.version
        # the episode is the injected fault (sample time): it starts inside it and ends after it
        assert label["start"] <= item["started_at"] <= label["end"] + WINDOW_S
        assert label["end"] <= item["ended_at"] <= label["end"] + 4 * WINDOW_S
        assert item["alert_id"] in resolution["message"]

        # 4. the healthy turbine, which streamed through all of it, raised nothing
        assert _notes(stack, HEALTHY) == []

        # 5. the operator's verdict becomes a training label under labels/
        if page is not None:
            _ack_in_the_console(page, home, item["alert_id"])
        else:
            assert main(["--data-dir", str(home), "alerts", "ack", item["alert_id"], "--verdict", "fault",
                         "--by", operator]) == 0
        doc = json.loads(stack.store.get(label_key(item["alert_id"])))
        (episode,) = doc["episodes"]
        assert episode["turbine_id"] == FAULTY and episode["fault"] == "operator-confirmed"
        assert (episode["start"], episode["end"]) == (item["started_at"], item["ended_at"])
        acks = doc["source"].pop("acks")
        assert doc["source"] == {"alert_id": item["alert_id"], "episode_id": item["episode_id"],
                                 "verdict": "fault", "by": operator, "note": "",
                                 "model_version": version.version}
        assert [(a["by"], a["verdict"]) for a in acks] == [(operator, "fault")]  # the history

        # 6. the device captured the episode's samples; the verdict labels them (labels meet data)
        captured = wait_for(lambda: _captured(stack, FAULTY, item["episode_id"]), 30, "the captured episode")
        name = captured[1]
        assert name.start <= item["started_at"] - 19.0 and name.end >= item["ended_at"]  # with its context
        labelled = wait_for(lambda: _capture_label(stack, captured[0]), 30, "the captured episode's label")
        assert [(e["turbine_id"], e["start"], e["end"]) for e in labelled["episodes"]] == \
            [(FAULTY, name.start, name.end)]
        assert not stack.store.list(f"raw/capture/{HEALTHY}/")  # no episode there; its normal sample waits a day
    print(f"mission timeline (s from start): {', '.join(f'{k}={v:.1f}' for k, v in marks.items())}; "
          f"total {time.monotonic() - started:.1f}")
