"""The turbine simulator: calibration to the seed, determinism, chunking, faults, files and streaming."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from nacelle.simulator.faults import (
    CHANNELS,
    DROPOUT_FRACTION,
    FAULTS,
    SIGMA,
    FaultEpisode,
    default_schedule,
    parse_faults,
    schedule_for,
)
from nacelle.simulator.generate import generate_dataset
from nacelle.simulator.physics import TurbineModel
from nacelle.simulator.stream import TurbineStream, paced
from shared.errors import ConfigurationError
from shared.ml.schema import RAW_COLUMNS, SEED_RAW_MEAN_ESTIMATE, SEED_RAW_STD, STRING_COLUMNS

START = datetime(2026, 1, 1, tzinfo=UTC)
NUMERIC = [c for c in RAW_COLUMNS if c not in STRING_COLUMNS]


def angles(d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ZYX Euler angles of the quaternion columns (the feature pipeline's formulas)."""
    w, x, y, z = d["qw"], d["qx"], d["qy"], d["qz"]
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1, 1))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return roll, pitch, yaw


def read_csv(path: Path) -> dict[str, np.ndarray]:
    rows = list(csv.reader(io.StringIO(gzip.decompress(path.read_bytes()).decode())))
    assert tuple(rows[0]) == RAW_COLUMNS
    cols = dict(zip(rows[0], (np.array(c) for c in zip(*rows[1:], strict=True)), strict=True))
    for name in NUMERIC:
        cols[name] = np.array([float(v) if v else np.nan for v in cols[name]])
    return cols


def equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f"
                                              else a == b))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "ds"
    generate_dataset(out, 2, 1.0, "default", 3)
    return out


# -- normal operation --------------------------------------------------------------------------------


@pytest.mark.parametrize("turbine", ["wt-01", "wt-02"])
def test_calibrated_to_the_seed_statistics(turbine: str) -> None:
    d = TurbineModel(turbine, 11, START).step(3600)
    feats = [*angles(d), d["wind_speed_rps"], d["rps"], d["voltage"]]
    ratios = [np.std(f, ddof=1) / s for f, s in zip(feats, SEED_RAW_STD, strict=True)]
    assert all(0.75 <= r <= 1.25 for r in ratios), ratios
    for name, f, s in zip(("wind_speed_rps", "rps", "voltage"), feats[3:], SEED_RAW_STD[3:], strict=True):
        assert abs(np.mean(f) - SEED_RAW_MEAN_ESTIMATE[name]) <= 0.3 * s, (name, np.mean(f))


def per_second(d: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A 1 Hz reading (rps, wind_speed_rps) by whole second since START: [s] is the count over [s-1, s)."""
    sec = np.floor(d["ts"] - START.timestamp()).astype(int)
    first = np.concatenate(([True], np.diff(sec) > 0))
    assert np.array_equal(sec[first], np.arange(len(sec[first])))
    return d[name][first]


def runs(mask: np.ndarray) -> np.ndarray:
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def test_the_rotor_coasts_through_turbulent_dips_below_cut_in() -> None:
    """Fault-free operation: about two 1 s wind readings below cut-in per turbine-hour, no rotor stop."""
    dips = 0
    for k in range(1, 13):
        model = TurbineModel(f"wt-{k:02d}", 17, START)
        d = model.step(3600)
        dips += len(runs(per_second(d, "wind_speed_rps") < model.params.cut_in))
        assert d["rps"].min() > 0, model.turbine_id
    assert dips >= 12


def test_rotor_inertia_coast_down_and_cut_in_hysteresis() -> None:
    """On a prescribed wind: a 3 s dip below cut-in barely slows the rotor; a calm stops it only after it
    has coasted for a long time; it restarts after 3 s of wind above cut-in, not after shorter gusts."""
    model = TurbineModel("wt-01", 3, START)
    p = model.params
    pieces = [(30, 2.54), (3, 0.8), (27, 2.54), (200, 0.5)] + [(2, 2.54), (1, 0.5)] * 10 + [(41, 2.54)]
    wind = np.concatenate([np.full(10 * s, w) for s, w in pieces])
    model._wind = lambda: wind[100 * model._st.block: 100 * model._st.block + 101]  # type: ignore[method-assign]
    d = model.step(330)
    rps, volt = per_second(d, "rps"), per_second(d, "voltage")
    steady = float(p.rotor_target(np.array([2.54]))[0])
    assert np.abs(rps[15:31] - steady).max() <= 0.1
    assert rps[31:40].min() >= 0.85 * steady and volt[31:40].min() > 0.8 * volt[20]  # the 3 s dip
    assert rps[75:81].min() > 0.5 and np.flatnonzero(rps == 0)[0] > 150  # the calm: a long coast-down
    assert rps[220:294].max() == 0  # at rest; the 2 s gusts from 260 s on do not restart it
    assert rps[294] > 0 and np.abs(rps[315:] - steady).max() <= 0.15  # restarted at 293 s, spun up


def test_a_calm_spell_is_one_long_stop_and_start() -> None:
    """A (rare) calm spell: the rotor coasts to rest, stays stopped for minutes and restarts once; the
    samples do not depend on the chunking."""
    def calm_model() -> TurbineModel:
        model = TurbineModel("wt-02", 5, START)
        model._st.lull = (-30.0, 240.0, 0.9)  # a spell beginning 30 s after the start, 240 s at 10 %
        return model

    whole = calm_model().step(600)
    rps = per_second(whole, "rps")
    zeros = np.flatnonzero(rps == 0)
    assert rps[:30].min() > 0 and rps[380:].min() > 0  # running before and after
    assert zeros[0] > 60 and zeros[-1] < 380 and runs(rps == 0).max() >= 180
    assert rps[zeros[0]: zeros[-1]].max() <= 0.25  # one stop, one start
    chunked = calm_model()
    parts = [chunked.step(s) for s in [7.3, 0.0, 0.01, 292.69, 123.0, 177.0]]
    for name in [*RAW_COLUMNS, "ts"]:
        assert equal(whole[name], np.concatenate([q[name] for q in parts])), name


def test_sensor_formats() -> None:
    d = TurbineModel("wt-01", 2, START).step(600)
    t = d["ts"] - START.timestamp()
    gaps = np.diff(t)
    assert gaps.min() >= 0.045 - 1e-6 and gaps.max() <= 0.055 + 1e-6
    assert len(t) == pytest.approx(12000, rel=0.01)
    for name in ("rps", "wind_speed_rps"):  # 1/16 steps, constant within each whole second
        v = d[name]
        assert np.array_equal(v * 16, np.round(v * 16)) and v.min() >= 0
        sec = np.floor(t).astype(int)
        changes = np.flatnonzero(np.diff(v))
        assert np.all(sec[changes + 1] != sec[changes])
        assert len(np.unique(v)) > 5
    v = d["voltage"]
    assert np.array_equal(v, np.round(v)) and v.min() >= 0 and v.max() <= 1023
    q = np.stack([d[c] for c in ("qw", "qx", "qy", "qz")])
    assert np.abs(np.linalg.norm(q, axis=0) - 1).max() <= 0.0101
    assert np.array_equal(q, np.round(q, 2))
    assert np.all(np.diff(d["arduino_timestamp"]) > 0)
    assert re.fullmatch(r"2026-01-01T00:00:00\.\d{6}\+00:00", d["eventTime"][0])
    parsed = np.array([datetime.fromisoformat(s).timestamp() for s in d["eventTime"][:50]])
    assert np.allclose(parsed, d["ts"][:50], atol=1e-6, rtol=0)
    assert np.all(np.abs(d["ax"]) < 32768) and abs(np.mean(d["az"]) - 16384) < 500
    for name in ("ambtemp", "humidity", "pressure", "gas"):  # BME680: one reading per 10 s
        assert len(np.unique(d[name])) <= 61
    assert 0 < np.mean(d["gearboxtemp"]) - np.mean(d["ambtemp"]) < 30


def test_chunking_does_not_change_the_samples() -> None:
    schedule = schedule_for("wt-01", 4, START, 3600)
    whole = TurbineModel("wt-01", 4, START, schedule).step(3600)
    chunked = TurbineModel("wt-01", 4, START, schedule)
    minutes = [chunked.step(60) for _ in range(60)]
    odd = TurbineModel("wt-01", 4, START, schedule)
    pieces = [odd.step(s) for s in [7.3, 0.0, 0.01, 1792.69] + [100.0] * 18]
    for parts in (minutes, pieces):
        for name in [*RAW_COLUMNS, "ts"]:
            assert equal(whole[name], np.concatenate([p[name] for p in parts])), name


def test_determinism_and_turbine_independence(tmp_path: Path) -> None:
    def files(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.csv.gz"))}

    a = generate_dataset(tmp_path / "a", 2, 0.1, "default", 21)
    b = generate_dataset(tmp_path / "b", 2, 0.1, "default", 21)
    c = generate_dataset(tmp_path / "c", 2, 0.1, "default", 22)
    one = generate_dataset(tmp_path / "one", 1, 0.1, "default", 21)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert a.labels.read_bytes() == b.labels.read_bytes()
    assert files(tmp_path / "a").keys() == files(tmp_path / "c").keys()
    assert all(files(tmp_path / "a")[k] != v for k, v in files(tmp_path / "c").items())
    first = {k: v for k, v in files(tmp_path / "a").items() if k.startswith("wt-01")}
    assert files(tmp_path / "one") == first
    assert one.episodes == [e for e in a.episodes if e.turbine_id == "wt-01"]
    assert c.rows > 0


# -- files and labels --------------------------------------------------------------------------------


def test_file_layout_and_labels(dataset: Path) -> None:
    assert sorted(str(p.relative_to(dataset)) for p in dataset.rglob("*.csv.gz")) == [
        "wt-01/wt-01_20260101T00.csv.gz", "wt-02/wt-02_20260101T00.csv.gz"]
    doc = json.loads((dataset / "labels.json").read_text())
    assert doc["version"] == 1
    assert doc["generator"] == {"turbines": 2, "hours": 1.0, "faults": "default", "seed": 3,
                                "start": "2026-01-01T00:00:00+00:00"}
    assert {tuple(e) for e in doc["episodes"]} == {("turbine_id", "fault", "severity", "start", "end")}
    episodes = [FaultEpisode.from_dict(e) for e in doc["episodes"]]
    assert [e.to_dict() for e in episodes] == doc["episodes"]
    cols = read_csv(dataset / "wt-02" / "wt-02_20260101T00.csv.gz")
    model = TurbineModel("wt-02", 3, START, [e for e in episodes if e.turbine_id == "wt-02"]).step(3600)
    for name in RAW_COLUMNS:
        assert equal(cols[name], model[name]), name
    text = gzip.decompress((dataset / "wt-01" / "wt-01_20260101T00.csv.gz").read_bytes())
    assert text.count(b"\n") > 70_000 and text.startswith(",".join(RAW_COLUMNS).encode() + b"\n")
    for turbine in ("wt-01", "wt-02"):  # the default schedule: >= 3 episodes per turbine-hour
        assert sum(e.turbine_id == turbine for e in episodes) >= 3


def test_partial_hours_go_to_their_clock_hour(tmp_path: Path) -> None:
    res = generate_dataset(tmp_path, 1, 0.5, "none", 1, start=datetime(2026, 3, 1, 9, 40, tzinfo=UTC))
    assert [p.name for p in res.files] == ["wt-01_20260301T09.csv.gz", "wt-01_20260301T10.csv.gz"]
    assert res.episodes == [] and res.rows == pytest.approx(36_000, rel=0.01)


def test_unknown_fault_name_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"'bogus'.*rotor_imbalance"):
        generate_dataset(tmp_path, 1, 0.1, "overspeed,bogus", 1)
    assert parse_faults("none") == () and parse_faults("default") == FAULTS
    assert parse_faults(" overspeed , voltage_noise") == ("overspeed", "voltage_noise")


# -- schedule ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "hours"), [(0, 1.0), (1, 3.0), (2, 7.5), (3, 0.4)])
def test_default_schedule(seed: int, hours: float) -> None:
    start = START + timedelta(minutes=17 * seed)
    eps = default_schedule("wt-01", start, hours * 3600, np.random.default_rng(seed))
    rel = [((e.start - start).total_seconds(), (e.end - start).total_seconds(), e) for e in eps]
    assert rel[0][0] >= 120 and rel[-1][1] <= hours * 3600
    for a, b, e in rel:
        assert (10 <= b - a <= 40) if e.fault == "sensor_dropout" else (30 <= b - a <= 180)
    assert all(nxt[0] - cur[1] >= 180 for cur, nxt in itertools.pairwise(rel))
    for h in range(int(hours)):  # every full turbine-hour
        assert sum(h * 3600 <= a < h * 3600 + 3600 for a, _, _ in rel) >= 3
    assert len(eps) >= 3 * int(hours)


def test_schedule_draws_kinds_and_severities() -> None:
    eps = default_schedule("wt-01", START, 200 * 3600, np.random.default_rng(0))
    assert {e.fault for e in eps} == set(FAULTS) and {e.severity for e in eps} == {"low", "medium", "high"}
    only = default_schedule("wt-01", START, 3 * 3600, np.random.default_rng(0), ["overspeed", "bearing_wear"])
    assert {e.fault for e in only} == {"overspeed", "bearing_wear"}


def test_dropout_writes_empty_fields_within_budget(tmp_path: Path) -> None:
    res = generate_dataset(tmp_path, 1, 1.0, "sensor_dropout", 5)
    assert res.episodes and all(e.fault == "sensor_dropout" for e in res.episodes)
    for path in res.files:
        text = gzip.decompress(path.read_bytes())
        cols = read_csv(path)
        shares = {c: float(np.mean(np.isnan(cols[c]))) for c in NUMERIC}
        assert max(shares.values()) <= 0.02, shares
        assert b",," in text and max(shares.values()) > 0


# -- faults ------------------------------------------------------------------------------------------


def faulty_vs_clean(fault: str, severity: str, seed: int = 8,
                    channel: str | None = None) -> tuple[dict, dict, np.ndarray, FaultEpisode]:
    """A run with one episode from 100 s to 220 s (+ a few s to get the wanted channel) and the clean run."""
    for shift in range(100):
        a, b = START + timedelta(seconds=100 + shift), START + timedelta(seconds=220 + shift)
        ep = FaultEpisode("wt-01", fault, severity, a, b)
        if channel is None or ep.channel == channel:
            break
    assert channel is None or ep.channel == channel
    clean = TurbineModel("wt-01", seed, START).step(360)
    faulty = TurbineModel("wt-01", seed, START, [ep]).step(360)
    t = clean["ts"] - START.timestamp()
    return clean, faulty, (t >= 100 + shift) & (t < 220 + shift), ep


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


@pytest.mark.parametrize("severity", ["medium", "high"])
@pytest.mark.parametrize("fault", ["rotor_imbalance", "vibration_noise"])
def test_orientation_faults_move_roll_and_pitch_by_k_sigma(fault: str, severity: str) -> None:
    clean, faulty, m, ep = faulty_vs_clean(fault, severity)
    for got, want, s in zip(angles(faulty)[:2], angles(clean)[:2], SEED_RAW_STD[:2], strict=True):
        assert rms((got - want)[m]) / (ep.k * s) == pytest.approx(1.0, abs=0.2)
        assert equal(got[~m], want[~m])


def test_bearing_wear_grows_over_the_episode() -> None:
    clean, faulty, m, ep = faulty_vs_clean("bearing_wear", "high")
    d = (angles(faulty)[0] - angles(clean)[0])[m]
    first, last = d[: len(d) // 6], d[-len(d) // 6:]
    assert rms(first) / (ep.k * SIGMA["roll"]) == pytest.approx(0.31, abs=0.12)
    assert rms(last) / (ep.k * SIGMA["roll"]) == pytest.approx(0.94, abs=0.15)


@pytest.mark.parametrize(("fault", "severity", "sign"),
                         [("overspeed", "medium", 1), ("yaw_misalignment", "medium", -1),
                          ("overspeed", "low", 1)])
def test_rotor_speed_faults_and_the_voltage_follows(fault: str, severity: str, sign: int) -> None:
    clean, faulty, m, ep = faulty_vs_clean(fault, severity)
    t = clean["ts"] - START.timestamp()
    inner = m & (t > 104) & (t < 216)
    shift = np.mean((faulty["rps"] - clean["rps"])[inner])
    assert sign * shift / (ep.k * SIGMA["rps"]) == pytest.approx(1.0, abs=0.1)
    dv = np.mean((faulty["voltage"] - clean["voltage"])[inner])
    assert sign * dv / (ep.k * SIGMA["voltage"]) == pytest.approx(1.0, abs=0.15)
    assert np.array_equal(faulty["wind_speed_rps"], clean["wind_speed_rps"])
    before = t < 99
    assert equal(faulty["rps"][before], clean["rps"][before])


def test_generator_fault_lowers_the_voltage_for_the_same_rotor_speed() -> None:
    clean, faulty, m, ep = faulty_vs_clean("generator_fault", "low")
    expected = np.maximum(clean["voltage"][m] - ep.k * SIGMA["voltage"], 0)
    assert np.abs(faulty["voltage"][m] - expected).max() <= 1
    assert np.array_equal(faulty["rps"], clean["rps"]) and equal(faulty["voltage"][~m], clean["voltage"][~m])


@pytest.mark.parametrize(("fault", "name"), [("rotation_noise", "rps"), ("voltage_noise", "voltage")])
def test_noise_injections(fault: str, name: str) -> None:
    clean, faulty, m, _ = faulty_vs_clean(fault, "low")
    assert rms((faulty[name] - clean[name])[m]) / SIGMA[name] == pytest.approx(1.0, abs=0.15)
    assert equal(faulty[name][~m], clean[name][~m])


@pytest.mark.parametrize("channel", CHANNELS)
def test_sensor_stuck_freezes_one_channel_off_by_k_sigma(channel: str) -> None:
    clean, faulty, m, _ = faulty_vs_clean("sensor_stuck", "medium", channel=channel)
    names = ["qw", "qx", "qy", "qz"] if channel == "quaternion" else [channel]
    for name in names:
        assert len(np.unique(faulty[name][m])) == 1, name
    onset = int(np.argmax(m))
    if channel == "quaternion":
        offset = np.array(angles(faulty)[:2])[:, onset] - np.array(angles(clean)[:2])[:, onset]
        assert np.abs(offset) / (2 * np.array(SEED_RAW_STD[:2])) == pytest.approx([1, 1], abs=0.35)
    else:
        offset = faulty[channel][onset] - clean[channel][onset]
        assert abs(offset) / (2 * SIGMA[channel]) == pytest.approx(1.0, abs=0.1)
    assert equal(faulty[names[0]][~m], clean[names[0]][~m])


@pytest.mark.parametrize(("severity", "channel"), [("low", "rps"), ("medium", "voltage"),
                                                   ("high", "wind_speed_rps"), ("low", "quaternion")])
def test_sensor_dropout_empties_a_fraction_of_one_channel(severity: str, channel: str) -> None:
    _, faulty, m, _ = faulty_vs_clean("sensor_dropout", severity, channel=channel)
    name = "qw" if channel == "quaternion" else channel
    lost = np.isnan(faulty[name])
    assert not lost[~m].any() and np.mean(lost[m]) == pytest.approx(DROPOUT_FRACTION[severity], abs=0.06)
    assert sum(np.isnan(faulty[c]).any() for c in NUMERIC) == (4 if channel == "quaternion" else 1)


def test_fault_episode_round_trip_and_checks() -> None:
    ep = FaultEpisode("wt-03", "overspeed", "high", START, START + timedelta(seconds=30.5))
    assert ep.to_dict() == {"turbine_id": "wt-03", "fault": "overspeed", "severity": "high",
                            "start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T00:00:30.500000+00:00"}
    assert FaultEpisode.from_dict(ep.to_dict()) == ep
    with pytest.raises(ConfigurationError):
        FaultEpisode("wt-03", "overspeed", "extreme", START, START + timedelta(seconds=1))
    with pytest.raises(ConfigurationError):
        FaultEpisode("wt-03", "melting", "low", START, START + timedelta(seconds=1))
    with pytest.raises(ConfigurationError):
        FaultEpisode("wt-03", "overspeed", "low", datetime(2026, 1, 1), datetime(2026, 1, 2))


# -- streaming ---------------------------------------------------------------------------------------


def test_stream_equals_the_generated_files(tmp_path: Path) -> None:
    res = generate_dataset(tmp_path, 2, 0.1, "default", 5)
    schedule = [e for e in res.episodes if e.turbine_id == "wt-02"]
    assert schedule
    cols = read_csv(tmp_path / "wt-02" / "wt-02_20260101T00.csv.gz")
    stream = TurbineStream("wt-02", 5, START, schedule)
    samples = []
    while stream.now < START + timedelta(seconds=360):
        samples += stream.next_batch(min(7.3, (START + timedelta(seconds=360) - stream.now).total_seconds()))
    assert len(samples) == len(cols["eventTime"]) and [s["seq"] for s in samples] == list(range(len(samples)))
    for name in RAW_COLUMNS:
        got = [s[name] for s in samples]
        want = cols[name].tolist()
        if name in NUMERIC:
            got = [np.nan if v is None else v for v in got]
            assert equal(np.array(got, dtype=float), np.array(want)), name
        else:
            assert got == want, name
    assert isinstance(samples[0]["voltage"], int) and isinstance(samples[0]["rps"], float)
    assert samples[1]["ts"] == pytest.approx(datetime.fromisoformat(samples[1]["eventTime"]).timestamp())


def test_injected_fault_is_labelled_and_equals_a_scheduled_one() -> None:
    live = TurbineStream("wt-01", 6, START)
    head = live.next_batch(33.3)
    ep = live.inject("generator_fault", "high", 20.0)
    assert ep.start == START + timedelta(seconds=33.3) and live.labels == [ep]
    tail = live.next_batch(60)
    assert head + tail == TurbineStream("wt-01", 6, START, [ep]).next_batch(93.3)
    clean = TurbineStream("wt-01", 6, START).next_batch(93.3)
    assert head == clean[: len(head)] and tail != clean[len(head):]
    low = [a["voltage"] < b["voltage"] for a, b in zip(tail, clean[len(head):], strict=True)]
    assert sum(low) > 0.9 * 20 * 20
    with pytest.raises(ConfigurationError):
        live.inject("overspeed", "low", 10.0, start=START)


def test_paced_releases_batches_on_stream_time() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    batches = paced(TurbineStream("wt-01", 1, START), speed=10.0, batch_seconds=2.0,
                    clock=lambda: now[0], sleep=sleep)
    got = [next(batches) for _ in range(3)]
    assert slept == pytest.approx([0.2, 0.2, 0.2]) and now[0] == pytest.approx(100.6)
    assert all(35 <= len(b) <= 45 for b in got)
    with pytest.raises(ConfigurationError):
        next(paced(TurbineStream("wt-01", 1, START), speed=0))
