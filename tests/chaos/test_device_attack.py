"""One turbine's certificate against the real local broker, rule engine, bus and cloud functions (the short
run of benchmarks/bench_attack.py): every other turbine's health and alerts come through intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.device_attack import ATTACKER, attack, rig
from nacelle.local.edge.broker import find_mosquitto
from shared.usecases.intake import REJECTED

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120),
              pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")]

VICTIMS = ["turbine-02", "turbine-03"]


def test_one_turbines_certificate_reaches_no_other_turbine(tmp_path: Path) -> None:
    with rig(tmp_path / "home", VICTIMS) as r:
        found = attack(r, flood_s=3.0, flood_rate=1000.0)
    refused = {i["sk"]: i for i in r.stack.state.query(REJECTED)}  # the engine records its last counts on stop
    device = r.stack.state.get("devices", ATTACKER) or {}
    assert found.takeover_lost == 0  # the cloud's session was never taken
    assert found.foreign_alert_changes == 0  # nor another turbine's alert touched or pre-claimed
    assert sorted(found.refused_topics) == sorted(f"turbines/{v}/{s}" for v in VICTIMS for s in ("anomalies", "health"))
    assert found.flood_msgs_per_s > 500 and found.other_lost_during_flood == 0
    assert found.refused_by_reason["quota"] > 1000 and found.refused_by_reason["oversize"] == 1
    assert found.refused_by_reason["json"] == 2  # NaN and "not json"
    # the cloud functions refused the rest and counted it: foreign turbine ids and episode ids, {} and a foreign object
    assert refused[f"{ATTACKER}#anomalies"]["by_reason"]["schema"] == 3 * len(VICTIMS)
    assert refused[f"{ATTACKER}#health"]["by_reason"]["schema"] == 2
    assert refused[f"{ATTACKER}#anomalies"]["by_reason"]["quota"] == found.refused_by_reason["quota"]
    assert "v999, which was never deployed to it" in device["unexpected_version"]
