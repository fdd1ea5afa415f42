import json

import pytest

from shared.errors import SpecError
from shared.ml.spec import FeatureSpec, default_spec, load_spec, parse_spec_text


def test_default_spec_reproduces_the_seed():
    spec = default_spec()
    assert spec.features == ("roll", "pitch", "yaw", "wind_speed_rps", "rps", "voltage")
    assert (spec.windows.length, spec.windows.stride, spec.sampling.rate_hz) == (100, 10, 20.0)
    assert len(spec.columns) == 23
    assert spec.input_columns == ("qw", "qx", "qy", "qz", "wind_speed_rps", "rps", "voltage")


def test_round_trip_through_dict_keeps_digest():
    spec = default_spec()
    again = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.digest() == spec.digest()


def test_yaml_and_json_files_load(tmp_path):
    as_json = tmp_path / "spec.json"
    as_json.write_text(json.dumps(default_spec().to_dict()))
    assert load_spec(as_json) == default_spec()


def _raw(**changes):
    raw = default_spec().to_dict()
    raw.update(changes)
    return raw


@pytest.mark.parametrize("changes, fragment", [
    ({"features": ["roll", "missing_col"]}, "needs column 'missing_col'"),
    ({"time_column": "nope"}, "time_column 'nope'"),
    ({"time_format": "rfc"}, "time_format"),
    ({"delimiter": ";;"}, "delimiter"),
    ({"windows": {"length": 10, "stride": 20}}, "stride"),
    ({"features": ["nanoId"]}, "non-numeric"),
    ({"surprise": 1}, "unknown key"),
    ({"spec_version": 9}, "spec_version 9"),
])
def test_invalid_specs_are_refused_with_the_reason(changes, fragment):
    with pytest.raises(SpecError, match=fragment):
        FeatureSpec.from_dict(_raw(**changes), "my-spec.yaml")


def test_generic_spec_without_turbine_column():
    spec = parse_spec_text("""
name: plant
time_column: ts
time_format: epoch_ms
delimiter: ";"
columns: [ts, a, b, c]
features: [a, b, c]
sampling: {rate_hz: 1.0}
windows: {length: 30, stride: 5, max_gap_s: 3}
""", "plant.yaml")
    assert spec.turbine_id_column is None
    assert spec.input_columns == ("a", "b", "c")
