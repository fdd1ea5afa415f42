"""The sensors component's configuration and register codec: every malformed map, node id or setting is refused
with the field named; what a controller encodes decodes to the same value."""

from __future__ import annotations

import itertools
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
from sensors.config import DeviceConfig, SensorsConfig
from sensors.streams import ReplaySource, SimulatedSource

from shared.errors import ConfigurationError
from shared.messages import SensorHealthMessage, decode
from shared.ml.spec import default_spec
from shared.sensor_map import (
    DATA_TYPES,
    MAX_READ_WORDS,
    default_node_ids,
    default_register_map,
    parse_register,
    parse_register_map,
    read_blocks,
)

THING = "turbine-01"
COLUMNS = default_spec().input_columns


def modbus(**over: Any) -> dict[str, Any]:
    section = {"host": "10.0.0.5", "registers": default_register_map(COLUMNS), **over}
    return {"source": "modbus", "modbus": section}


def opcua(**over: Any) -> dict[str, Any]:
    return {"source": "opcua", "opcua": {"endpoint": "opc.tcp://10.0.0.5:4840", "nodes": default_node_ids(COLUMNS),
                                         **over}}


def refused(raw: Any, *fragments: str) -> str:
    with pytest.raises(ConfigurationError) as info:
        SensorsConfig.from_dict(raw, THING, "cfg.json")
    text = str(info.value)
    assert text.startswith("cfg.json"), text
    for fragment in fragments:
        assert fragment in text, text
    return text


def test_a_valid_modbus_configuration_takes_the_spec_rate_and_carries_extra_signals() -> None:
    regs = default_register_map((*COLUMNS, "server_seq"))
    config = SensorsConfig.from_dict(modbus(registers=regs, unitId=3), THING)
    assert config.rate_hz == default_spec().sampling.rate_hz == 20.0
    assert config.signals == (*COLUMNS, "server_seq")
    assert config.sensors_topic == "turbines/turbine-01/sensors"
    assert config.health_topic == "turbines/turbine-01/sensors/health"
    assert config.modbus is not None and config.modbus.unit_id == 3
    assert config.endpoint == "modbus://10.0.0.5:502/3"


@pytest.mark.parametrize(("raw", "fragments"), [
    ({}, ("source must be one of", "''")),
    ({"source": "serial"}, ("source must be one of",)),
    ({"source": "modbus", "colour": 1}, ("unknown key(s) ['colour']",)),
    (modbus(host=""), ("modbus.host",)),
    (modbus(host="plc one"), ("modbus.host",)),
    (modbus(port=0), ("modbus.port", "1..65535")),
    (modbus(port="502"), ("modbus.port",)),
    (modbus(unitId=256), ("modbus.unitId", "0..255")),
    (modbus(timeoutSeconds=0), ("modbus.timeoutSeconds",)),
    (modbus(timeoutSeconds=math.inf), ("modbus.timeoutSeconds",)),
    (modbus(registers={}), ("modbus.registers", "non-empty")),
    (modbus(registers={c: v for c, v in default_register_map(COLUMNS).items() if c != "rps"}),
     ("modbus.registers", "'rps'", "mini-turbine")),
    (modbus(registers={**default_register_map(COLUMNS), "rps": {"address": 1, "registerType": "input"}}),
     ("modbus.registers.", "overlaps")),
    (modbus(registers={**default_register_map(COLUMNS), "rps": {"address": 70000}}),
     ("modbus.registers.rps.address", "0..65535")),
    (modbus(registers={**default_register_map(COLUMNS), "rps": {"address": 65535, "dataType": "float32"}}),
     ("modbus.registers.rps.address", "runs past")),
    (modbus(registers={**default_register_map(COLUMNS), "rps": {"address": 90, "dataType": "float16"}}),
     ("modbus.registers.rps.dataType", "int16")),
    (modbus(registers={**default_register_map(COLUMNS), "rps": {"address": 90, "registerType": "coil"}}),
     ("modbus.registers.rps.registerType", "holding, input")),
    (modbus(registers={**default_register_map(COLUMNS), "rps": {"address": 90, "wordOrder": "middle"}}),
     ("modbus.registers.rps.wordOrder",)),
    (modbus(registers={**default_register_map(COLUMNS), "rps": {"address": 90, "scale": 0}}),
     ("modbus.registers.rps.scale",)),
    (modbus(registers={**default_register_map(COLUMNS), "rps": {"address": 90, "offset": "1"}}),
     ("modbus.registers.rps.offset", "finite number")),
    (modbus(registers={**default_register_map(COLUMNS), "rps": {"address": 90, "addr": 1}}),
     ("modbus.registers.rps", "unknown key(s) ['addr']")),
    (modbus(registers={**default_register_map(COLUMNS), "rps": [90]}), ("modbus.registers.rps", "object")),
    (modbus(registers={**default_register_map(COLUMNS), "ts": {"address": 90}}), ("'ts' is not a usable signal",)),
    (modbus(registers={**default_register_map(COLUMNS), "a b": {"address": 90}}), ("'a b'",)),
    (opcua(endpoint="http://plc:4840"), ("opcua.endpoint", "opc.tcp://")),
    (opcua(mode="push"), ("opcua.mode", "polling, subscription")),
    (opcua(nodes={**default_node_ids(COLUMNS), "rps": "Turbine.rps"}), ("opcua.nodes.rps", "not an OPC UA node id")),
    (opcua(nodes={**default_node_ids(COLUMNS), "rps": "ns=x;i=1"}), ("opcua.nodes.rps",)),
    (opcua(nodes={**default_node_ids(COLUMNS), "rps": "ns=2;s=Turbine.qw"}), ("mapped to more than one signal",)),
    (opcua(nodes={c: n for c, n in default_node_ids(COLUMNS).items() if c != "qw"}), ("opcua.nodes", "'qw'")),
    (opcua(security={"mode": "SignAndEncrypt"}), ("opcua.security.certificate", "required")),
    (opcua(security={"mode": "Encrypt"}), ("opcua.security.mode", "SignAndEncrypt")),
    (opcua(security={"mode": "Sign", "certificate": "c.der", "privateKey": "k.pem", "policy": "Basic128Rsa15"}),
     ("opcua.security.policy",)),
    ({"source": "replay", "replay": {"file": ""}}, ("replay.file",)),
    ({"source": "replay", "replay": {"file": "x.csv", "speed": 0}}, ("replay.speed",)),
    ({"source": "replay", "replay": {"file": "x.csv", "loop": "yes"}}, ("replay.loop",)),
    ({"source": "simulator", "simulator": {"seed": -1}}, ("simulator.seed",)),
    ({"source": "simulator", "rateHz": -1}, ("rateHz",)),
    ({"source": "simulator", "rateHz": 1e-9}, ("rateHz", "0 (the spec's rate) or a number in [0.01, 1000]")),
    ({"source": "simulator", "rateHz": 1001}, ("rateHz", "[0.01, 1000]")),
    ({"source": "simulator", "healthIntervalSeconds": 1e-6}, ("healthIntervalSeconds", "[1, 86400]")),
    ({"source": "simulator", "healthIntervalSeconds": 86401}, ("healthIntervalSeconds", "[1, 86400]")),
    ({"source": "simulator", "reconnect": {"minSeconds": 1e-9, "maxSeconds": 1e-9}},
     ("reconnect.minSeconds", "[0.01, 60]")),
    ({"source": "simulator", "batchSamples": 0}, ("batchSamples", "1..1000")),
    ({"source": "simulator", "healthIntervalSeconds": True}, ("healthIntervalSeconds",)),
    ({"source": "simulator", "topics": {"sensors": "turbines/+/sensors"}}, ("topics.sensors", "plain topic")),
    ({"source": "simulator", "reconnect": {"minSeconds": 5, "maxSeconds": 1}}, ("reconnect.maxSeconds",)),
    ({"source": "simulator", "spec": {"name": "x"}}, ("spec", "missing required key(s)")),
    ({"source": "simulator", "spec": "mine.yaml"}, ("spec must be",)),
    ([], ("must be a JSON object",)),
])
def test_malformed_configuration_names_the_field(raw: Any, fragments: tuple[str, ...]) -> None:
    refused(raw, *fragments)


@pytest.mark.parametrize("data_type", sorted(DATA_TYPES))
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_every_data_type_and_word_order_round_trips(data_type: str, word_order: str) -> None:
    reg = parse_register("x", {"address": 10, "dataType": data_type, "wordOrder": word_order, "scale": 0.5,
                               "offset": -3.0}, "m.x")
    value = 100.5 if data_type.startswith(("int", "float")) else 1000.5
    words = reg.encode(value)
    assert len(words) == DATA_TYPES[data_type][1] and all(0 <= w <= 0xFFFF for w in words)
    assert reg.decode(words) == pytest.approx(value)
    if reg.words > 1:  # the word order really changes the layout
        other = parse_register("x", {"address": 10, "dataType": data_type, "scale": 0.5, "offset": -3.0,
                                     "wordOrder": "little" if word_order == "big" else "big"}, "m.x")
        assert other.encode(value) == list(reversed(words))


def test_known_register_layouts_decode_like_a_controller_sends_them() -> None:
    f32 = parse_register("v", {"address": 0, "dataType": "float32"}, "m.v")
    assert f32.decode([0x4049, 0x0FDB]) == pytest.approx(3.14159274)  # pi, high word first
    swapped = parse_register("v", {"address": 0, "dataType": "float32", "wordOrder": "little"}, "m.v")
    assert swapped.decode([0x0FDB, 0x4049]) == pytest.approx(3.14159274)
    i16 = parse_register("t", {"address": 0, "dataType": "int16", "scale": 0.1, "missing": -32768}, "m.t")
    assert i16.decode([0xFF9C]) == pytest.approx(-10.0)  # -100 * 0.1
    assert i16.decode([0x8000]) is None  # the controller's "no reading"
    u32 = parse_register("c", {"address": 0, "dataType": "uint32"}, "m.c")
    assert u32.decode([0x0001, 0x0000]) == 65536.0
    assert f32.decode(f32.encode(None)) is None  # NaN: missing
    with pytest.raises(ValueError, match="does not fit"):
        i16.encode(1e6)
    with pytest.raises(ValueError, match="no missing value"):
        u32.encode(None)


def test_intervals_at_their_bounds_are_accepted() -> None:
    config = SensorsConfig.from_dict({"source": "simulator", "rateHz": 0.01, "healthIntervalSeconds": 1,
                                      "reconnect": {"minSeconds": 0.01, "maxSeconds": 0.01}}, THING)
    assert (config.rate_hz, config.health_interval_s, config.reconnect_min_s) == (0.01, 1.0, 0.01)
    assert SensorsConfig.from_dict({"source": "simulator", "rateHz": 0}, THING).rate_hz == 20.0  # the spec's


@pytest.mark.parametrize("sentinel", [-9999.0, -999.9, 0.1, -1e20, 3.4028235e38])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_a_float32_missing_value_is_recognised_as_the_register_holds_it(sentinel: float, word_order: str) -> None:
    reg = parse_register("rps", {"address": 0, "dataType": "float32", "wordOrder": word_order, "missing": sentinel},
                         "m.rps")
    assert reg.decode(reg.encode(None)) is None  # what a controller serves for "no reading"
    served = list(struct.unpack(">2H", struct.pack(">f", sentinel)))
    assert reg.decode(served if word_order == "big" else served[::-1]) is None
    assert reg.decode(reg.encode(1.5)) == 1.5
    wide = parse_register("rps", {"address": 0, "dataType": "float64", "missing": sentinel}, "m.rps")
    assert wide.missing == sentinel and wide.decode(wide.encode(None)) is None


@pytest.mark.parametrize(("data_type", "sentinel", "reason"), [
    ("int16", 1.5, "must be an integer for a int16 register"),
    ("int16", 32768, "out of range for a int16 register"),
    ("uint16", -1, "out of range for a uint16 register"),
    ("uint32", 2.0**32, "out of range for a uint32 register"),
    ("float32", 1e39, "out of range for a float32 register"),
    ("float32", 1e-50, "cannot be held by a float32 register"),
    ("float32", math.inf, "finite number"),
    ("int16", "x", "finite number"),
])
def test_a_missing_value_the_data_type_cannot_hold_is_refused(data_type: str, sentinel: Any, reason: str) -> None:
    regs = {**default_register_map(COLUMNS), "rps": {"address": 90, "dataType": data_type, "missing": sentinel}}
    refused(modbus(registers=regs), "modbus.registers.rps.missing: ", reason)


def test_integer_missing_values_are_exact() -> None:
    big = parse_register("c", {"address": 0, "dataType": "uint64", "missing": 2**64 - 1}, "m.c")
    assert big.decode([0xFFFF] * 4) is None and big.decode([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]) is not None
    i16 = parse_register("t", {"address": 0, "dataType": "int16", "missing": -32768.0}, "m.t")
    assert i16.missing == -32768 and i16.decode([0x8000]) is None


def test_read_blocks_are_contiguous_per_type_and_bounded() -> None:
    regs = parse_register_map({
        "a": {"address": 0, "registerType": "holding"}, "b": {"address": 2, "registerType": "holding"},
        "c": {"address": 10, "registerType": "holding", "dataType": "int16"},
        "d": {"address": 0, "registerType": "input", "dataType": "uint16"}}, "m")
    blocks = read_blocks(regs)
    assert [(b.register_type, b.address, b.count) for b in blocks] == [("holding", 0, 4), ("holding", 10, 1),
                                                                        ("input", 0, 1)]
    many = parse_register_map({f"s{i}": {"address": 2 * i} for i in range(100)}, "m")
    assert all(b.count <= MAX_READ_WORDS for b in read_blocks(many))
    assert sum(len(b.registers) for b in read_blocks(many)) == 100
    with pytest.raises(ValueError, match="expected 4 registers"):
        blocks[0].decode([1, 2])


def test_replay_refuses_a_file_that_fails_validation_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "commissioning.csv"
    spec = default_spec()
    header = ",".join(spec.columns)
    row = ",".join("2026-01-01T00:00:00Z" if c == "eventTime" else "x" if c in ("nanoId", "turbineId") else "oops"
                   if c == "rps" else "1" for c in spec.columns)
    bad.write_text(f"{header}\n{row}\n")
    config = SensorsConfig.from_dict({"source": "replay", "replay": {"file": str(bad)}}, THING)
    assert config.replay is not None
    with pytest.raises(ConfigurationError, match=r"replay\.file: .*commissioning\.csv"):
        ReplaySource(config.replay, spec)
    missing = SensorsConfig.from_dict({"source": "replay", "replay": {"file": str(tmp_path / "nope.csv")}}, THING)
    assert missing.replay is not None
    with pytest.raises(ConfigurationError, match=r"nope\.csv"):
        ReplaySource(missing.replay, spec)


def test_replay_keeps_the_file_spacing_and_marks_empty_readings(tmp_path: Path) -> None:
    from nacelle.simulator.generate import generate_dataset

    generate_dataset(tmp_path / "gen", 1, 0.01, "none", 4)  # 36 s of one turbine
    [csv] = sorted((tmp_path / "gen").rglob("*.csv*"))
    config = SensorsConfig.from_dict({"source": "replay", "replay": {"file": str(csv), "speed": 50}}, THING)
    assert config.replay is not None
    source = ReplaySource(config.replay, config.spec, start=1000.0)
    samples = [s for _ in range(50) for s in source.take(1.0)]
    assert 30 * 20 * 0.8 < len(samples) <= 36 * 20 * 1.2 and source.finished
    ts = [s["ts"] for s in samples]
    assert ts[0] == 1000.0 and all(b > a for a, b in itertools.pairwise(ts))
    assert [s["seq"] for s in samples] == list(range(len(samples)))
    assert set(samples[0]) == {"seq", "ts", *config.spec.input_columns}


def test_simulator_source_refuses_a_spec_it_cannot_serve() -> None:
    spec = default_spec().to_dict()
    spec["columns"] = [*spec["columns"], "oil_temp"]
    spec["features"] = [*spec["features"], "oil_temp"]
    config = SensorsConfig.from_dict({"source": "simulator", "spec": spec}, THING)
    assert config.simulator is not None
    with pytest.raises(ConfigurationError, match="no signal oil_temp"):
        SimulatedSource(THING, config.simulator, config.spec)


def test_device_config_names_the_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    good = {"endpoint": "127.0.0.1", "port": 8883, "ca": "ca.pem", "cert": "c.pem", "key": "k.pem",
            "configuration": "cfg.json", "work": "w", "client_id": "turbine-01.sensors"}
    path.write_text(json.dumps(good))
    assert DeviceConfig.load(path).client_id == "turbine-01.sensors"
    for key, value in (("port", 0), ("cert", ""), ("client_id", 7)):
        path.write_text(json.dumps({**good, key: value}))
        with pytest.raises(ConfigurationError, match=key):
            DeviceConfig.load(path)


def test_the_health_message_definition_refuses_what_it_should() -> None:
    base = {"v": 1, "turbine_id": THING, "seq": 1, "source": "modbus", "state": "connected", "rate_hz": 20.0}
    assert decode(SensorHealthMessage, json.dumps(base).encode()).state == "connected"
    for bad in ({"state": "on fire"}, {"source": "serial"}, {"samples": -1}, {"rate_hz": "20"}, {"extra": 1}):
        with pytest.raises(ValueError):
            decode(SensorHealthMessage, json.dumps({**base, **bad}).encode())


def test_opcua_values_that_are_not_good_numbers_are_missing_readings() -> None:
    from asyncua import ua
    from sensors.opcua import _number
    from sensors.sampler import Counting, SourceStats

    good = ua.DataValue(ua.Variant(2.5, ua.VariantType.Double))
    bad = ua.DataValue(ua.Variant(2.5, ua.VariantType.Double),
                       StatusCode=ua.StatusCode(ua.UInt32(ua.StatusCodes.BadSensorFailure)))
    uncertain = ua.DataValue(ua.Variant(2.5, ua.VariantType.Double),
                             StatusCode=ua.StatusCode(ua.UInt32(ua.StatusCodes.UncertainLastUsableValue)))
    text = ua.DataValue(ua.Variant("2.5", ua.VariantType.String))
    flag = ua.DataValue(ua.Variant(True, ua.VariantType.Boolean))
    array = ua.DataValue(ua.Variant([1.0, 2.0], ua.VariantType.Double))
    assert _number(good) == 2.5 and _number(ua.DataValue(ua.Variant(7, ua.VariantType.Int32))) == 7.0
    assert [_number(v) for v in (bad, uncertain, text, flag, array, None)] == [None] * 6
    out: list[dict[str, Any]] = []
    stats = SourceStats()
    counting = Counting(("a", "b"), out.append, stats)
    counting.sample(1, 0.05, {"a": math.nan, "b": 1.0})  # a NaN that got through is no reading either
    counting.sample(2, 0.10, {"a": math.inf})
    assert out == [{"seq": 1, "ts": 0.05, "a": None, "b": 1.0}, {"seq": 2, "ts": 0.10, "a": None, "b": None}]
    assert (stats.samples, stats.samples_missing, stats.values_missing) == (2, 1, 1)
