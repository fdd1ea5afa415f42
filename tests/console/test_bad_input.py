"""What the console does with input it cannot use and with times it cannot place: a malformed parameter is a 400
naming it, a stored time no date holds shows as unknown (never a 500), a broken page address says so; and its
Approve of a version approved for the canary only widens it to the fleet, as the CLI does."""

from __future__ import annotations

import json

import pytest

from benchmarks.console_seed import Seeded
from nacelle.local.runtime.console_server import ConsoleServer
from shared.usecases.alerts import ALERTS
from shared.usecases.approval_scope import APPROVAL_SCOPE, SCOPE_CANARY, canary_only, fleet_approved
from tests.console.browser import browser_page, needs_chromium
from tests.console.conftest import Caller


def test_approve_widens_a_canary_only_approval_to_the_fleet(call: Caller, seeded: Seeded) -> None:
    registry, group, v = seeded.stack.registry, seeded.stack.settings.group, seeded.pending
    registry.update_metadata(group, v, {APPROVAL_SCOPE: SCOPE_CANARY})  # what the drift auto-approval writes
    registry.set_status(group, v, "Approved", "passed the gate: approved for the canary", "nacelle")
    assert canary_only(registry.get(group, v))
    reply = call("POST", f"/api/models/{v}/approve", {"reason": "canary looks good"})
    assert reply.status == 200, reply.text
    assert reply.json()["changed"] is True and fleet_approved(registry.get(group, v))
    assert call("POST", f"/api/models/{v}/approve", {"reason": "again"}).json()["changed"] is False


def test_a_stored_time_no_date_holds_shows_as_unknown_in_every_view(call: Caller, seeded: Seeded) -> None:
    alerts = seeded.stack.alert_deps().alerts
    alert_id = next(a for a in seeded.alert_ids if ":turbine-02:" in a)
    item = alerts.get(ALERTS, alert_id)
    assert item is not None
    alerts.put(ALERTS, alert_id, {**item, "ended_at": 1e20, "last_message_at": 1.7e18})  # kept from before the bound
    listed = call.get("/api/alerts?limit=500")["items"]
    assert [a["ended_at"] for a in listed if a["alert_id"] == alert_id] == [None]
    assert call.get(f"/api/alerts/{alert_id.replace(':', '%3A')}")["ended_at"] is None
    timeline = call.get("/api/turbines/turbine-02/timeline")
    [episode] = [e for e in timeline["episodes"] if e["alert_id"] == alert_id]
    assert episode["ended_at"] == episode["started_at"]  # its opening: the last time the stores can place


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("GET", "/api/models?limit=%C2%B2", None, "limit"),  # '²': str.isdigit() takes it, int() does not
    ("GET", "/api/data?recent=%C2%B2", None, "recent"),
    ("GET", "/api/models?offset=--5", None, "offset"),
    ("GET", "/api/models/99999999999999999999", None, "version"),
    ("GET", "/api/models/1/compare/99999999999999999999", None, "other"),
    ("POST", "/api/fleet/rollback", {"version": "\u00b2"}, "version"),
    ("POST", "/api/fleet/rollback", {"version": 99999999999999999999}, "version"),
    ("POST", "/api/models/99999999999999999999/approve", {"reason": "x"}, "version"),
    ("GET", "/api/turbines/turbine-01/signals?start=1e15&end=1.0000000001e15", None, "start"),
    ("GET", "/api/turbines/turbine-01/signals?start=1e308&end=1e309", None, "start"),
    ("GET", "/api/turbines/turbine-01/signals?start=-1e20&end=-99999999999999999999", None, "start"),
    ("GET", "/api/turbines/turbine-01/signals?start=0001-01-01T00:00:00Z&end=0001-01-01T01:00:00Z", None, "start"),
])
def test_malformed_parameters_are_400_naming_them(call: Caller, method: str, path: str, body: object,
                                                   field: str) -> None:
    reply = call(method, path, body)
    assert reply.status == 400, reply.text
    assert reply.json()["error"]["field"] == field


def test_a_note_with_a_lone_surrogate_is_400_and_nothing_is_stored(call: Caller, seeded: Seeded) -> None:
    alert_id = seeded.alert_ids[1]
    path = f"/api/alerts/{alert_id.replace(':', '%3A')}/ack"
    reply = call("POST", path, b'{"verdict": "fault", "note": "x\\ud800"}')
    assert reply.status == 400, reply.text
    assert reply.json()["error"]["field"] == "note"
    assert call.get(f"/api/alerts/{alert_id.replace(':', '%3A')}")["acks"] == []
    assert json.loads(call("POST", path, {"verdict": "fault", "note": "x"}).text)["acks"][0]["note"] == "x"


@needs_chromium
def test_a_page_address_with_broken_percent_encoding_says_so(server: ConsoleServer) -> None:
    with browser_page() as page:  # fails on any page error
        page.goto(server.url)
        page.goto(server.base_url + "turbines/turbine-01%")
        page.wait_for_selector("[data-testid=bad-address] >> text=not valid percent-encoding")
        assert "bad address" in page.inner_text("#status")
