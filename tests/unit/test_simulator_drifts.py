"""The simulator's drifts (nacelle/simulator/drifts.py): lasting changes that are not faults, on demand, labelled."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from nacelle.simulator.device import Simulator, request_drift
from nacelle.simulator.drifts import DriftEpisode, DriftWindow, ambient_offset
from nacelle.simulator.physics import TurbineModel
from shared.errors import ConfigurationError

START = datetime(2026, 3, 1, tzinfo=UTC)
ONSET = START + timedelta(minutes=5)


def run(kind: str | None, seconds: float = 600.0, magnitude: float = 1.0) -> dict[str, np.ndarray]:
    model = TurbineModel("wt-7", 3, START)
    if kind is not None:
        model.add_drift(DriftEpisode("wt-7", kind, ONSET, magnitude))
    return model.step(seconds)


@pytest.fixture(scope="module")
def plain() -> dict[str, np.ndarray]:
    return run(None)


HUB = {"qw", "qx", "qy", "qz", "gx", "gy", "gz", "ax", "ay", "az"}  # the IMU's orientation, gravity and acceleration


@pytest.mark.parametrize("kind, changed, allowed", [
    ("seasonal_temperature", {"ambtemp", "gearboxtemp"}, HUB),
    ("sensor_recalibration", {"wind_speed_rps"}, set()),
    ("component_replacement", {"qx", "qy"}, HUB),
])
def test_a_drift_changes_only_its_signals_and_only_from_its_start(plain: dict[str, np.ndarray], kind: str,
                                                                  changed: set[str], allowed: set[str]) -> None:
    drifted = run(kind)
    before = plain["ts"] < ONSET.timestamp()
    numeric = [c for c in plain if plain[c].dtype.kind in "fi"]
    assert all(np.array_equal(plain[c][before], drifted[c][before], equal_nan=True) for c in numeric)
    differ = {c for c in numeric if not np.array_equal(plain[c][~before], drifted[c][~before], equal_nan=True)}
    assert changed <= differ <= changed | allowed


def test_the_drifts_are_the_documented_changes(plain: dict[str, np.ndarray]) -> None:
    after = plain["ts"] >= ONSET.timestamp()
    season = DriftWindow(DriftEpisode("wt-7", "seasonal_temperature", ONSET), 0)  # -15 K over a raised-cosine hour
    assert [ambient_offset([season], int(h * 3600e6)) for h in (-0.5, 0.0, 0.5, 1.0, 5.0)] == pytest.approx(
        [0.0, 0.0, -7.5, -15.0, -15.0])
    wind = run("sensor_recalibration")
    ratio = np.nanmean(wind["wind_speed_rps"][after]) / np.nanmean(plain["wind_speed_rps"][after])
    assert ratio == pytest.approx(1.10, abs=0.02)
    new = run("component_replacement")
    assert np.std(new["qx"][after]) > 1.2 * np.std(plain["qx"][after])  # a stronger hub vibration and wobble
    stronger = run("sensor_recalibration", magnitude=2.0)
    assert np.nanmean(stronger["wind_speed_rps"][after]) / np.nanmean(plain["wind_speed_rps"][after]) > 1.15


def test_bad_drifts_are_refused_naming_what_is_wrong() -> None:
    with pytest.raises(ConfigurationError, match="unknown drift 'icing'"):
        DriftEpisode("wt-7", "icing", ONSET)
    with pytest.raises(ConfigurationError, match="magnitude"):
        DriftEpisode("wt-7", "sensor_recalibration", ONSET, float("nan"))
    model = TurbineModel("wt-7", 3, START)
    model.step(600)
    with pytest.raises(ConfigurationError, match="before the simulator's current time"):
        model.add_drift(DriftEpisode("wt-7", "sensor_recalibration", ONSET))
    with pytest.raises(ConfigurationError, match="given to turbine"):
        model.add_drift(DriftEpisode("wt-8", "sensor_recalibration", START + timedelta(hours=1)))


def test_a_requested_drift_starts_now_for_good_and_is_labelled(tmp_path: Path) -> None:
    published: list[bytes] = []
    sim = Simulator("turbine-03", tmp_path, lambda _t, p: published.append(p), speed=float("inf"), start=START)
    sim.run(max_batches=30)
    request_drift(tmp_path, "turbine-03", "component_replacement", 1.5)
    (sim.paths.inbox / "bad.json").write_text(json.dumps({"drift": "component_replacement", "magnitude": 9}))
    sim.poll_inbox()
    [label] = [json.loads(line) for line in sim.paths.drifts.read_text().splitlines()]
    assert label == {"turbine": "turbine-03", "drift": "component_replacement", "magnitude": 1.5,
                     "start": (START + timedelta(seconds=30)).timestamp(),
                     "full_at": (START + timedelta(seconds=30)).timestamp(), "end": None}
    assert "magnitude" in (sim.paths.rejected / "bad.json.error").read_text()
    assert [d.kind for d in sim.stream.model.drifts] == ["component_replacement"]
    with pytest.raises(ConfigurationError, match="unknown drift"):
        request_drift(tmp_path, "turbine-03", "icing")
