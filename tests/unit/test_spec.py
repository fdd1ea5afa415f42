"""The feature spec: format version 2 (timescales in seconds), defaults derived from the sampling rate,
version-1 specs converted on read, and the geometry in samples computed once."""

import json
import math
from itertools import pairwise

import pytest

from shared.errors import SpecError
from shared.ml.episodes import EpisodeRule
from shared.ml.spec import (
    MAX_CONTEXT_SAMPLES,
    OPEN_FRACTION,
    RELEASE_RATIO,
    FeatureSpec,
    default_spec,
    load_spec,
    parse_spec_text,
)

# The share of `within_s` in alarm that opens an episode (0.6: 12 of the 20 windows of the default
# horizon); docs/data.md's table is checked against the code in test_data_doc.
DEFAULT_K = math.ceil(OPEN_FRACTION * 20 - 1e-9)


def test_default_spec_reproduces_the_seed():
    spec = default_spec()
    assert spec.spec_version == 2
    assert spec.features == ("roll", "pitch", "yaw", "wind_speed_rps", "rps", "voltage")
    assert (spec.windows.length_s, spec.windows.stride_s, spec.sampling.rate_hz) == (5.0, 0.5, 20.0)
    g = spec.geometry
    assert (g.length, g.stride, g.max_gap_s) == (100, 10, 1.0)
    assert spec.drift.features is None  # "auto": the training job decides
    assert len(spec.columns) == 23
    assert spec.input_columns == ("qw", "qx", "qy", "qz", "wind_speed_rps", "rps", "voltage")


def test_round_trip_through_dict_keeps_digest():
    for spec in (default_spec(), default_spec().with_drift(["voltage"]), default_spec().with_drift([])):
        raw = json.loads(json.dumps(spec.to_dict()))
        again = FeatureSpec.from_dict(raw)
        assert again == spec
        assert again.digest() == spec.digest()
    assert default_spec().to_dict()["drift"]["features"] == "auto"
    assert default_spec().digest() != default_spec().with_drift([]).digest()  # the resolved choice counts


def test_a_difference_feature_reads_both_columns_and_survives_the_round_trip():
    raw = _raw(features=["rps", "rise"], operating=None, derived=[
        {"name": "rise", "kind": "difference", "inputs": {"value": "voltage", "reference": "wind_speed_rps"}}])
    spec = FeatureSpec.from_dict(raw)
    assert spec.input_columns == ("rps", "voltage", "wind_speed_rps")
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


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
    ({"sampling": {"rate_hz": 1.0, "interval_s": 1.0}}, "give rate_hz or interval_s, not both"),
    ({"sampling": {"interval_s": 0}}, r"sampling\.interval_s must be > 0"),
    ({"decimal": "·"}, "decimal must be '.' or ','"),
    ({"decimal": ","}, "decimal and delimiter are both ','"),
    ({"windows": {"length_s": 1.0, "stride_s": 2.0}}, "stride_s"),
    ({"windows": {"length": 100, "stride": 10}}, r"unknown key\(s\) \['length', 'stride'\]"),  # v1 keys in v2
    ({"features": ["nanoId"]}, "non-numeric"),
    ({"surprise": 1}, "unknown key"),
    ({"spec_version": 9}, "spec_version 9"),
    ({"drift": {"features": ["roll", "gearboxtemp"]}}, "drift.features names 'gearboxtemp'"),
    ({"drift": {"features": "some"}}, "drift.features must be"),
    ({"drift": {"window_s": 3}}, "drift: unknown key"),
    ({"derived": [{"name": "rise", "kind": "difference", "inputs": {"value": "rps", "minus": "voltage"}}]},
     r"derived feature 'rise' \(difference\) needs inputs value and reference"),
    ({"derived": [{"name": "rise", "kind": "difference", "inputs": {"value": "rps", "reference": "rps"}}]},
     "two different columns"),
    ({"derived": [{"name": "rise", "kind": "difference", "inputs": {"value": "rps", "reference": "oil"}}],
      "features": ["rps", "rise"]}, "feature 'rise' needs column 'oil'"),
    ({"derived": [{"name": "rise", "kind": "ratio", "inputs": {"value": "rps", "reference": "voltage"}}]},
     "unknown kind 'ratio'"),
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
windows: {length_s: 30, stride_s: 5, max_gap_s: 3}
""", "plant.yaml")
    assert spec.turbine_id_column is None
    assert spec.input_columns == ("a", "b", "c")
    assert (spec.geometry.length, spec.geometry.stride) == (30, 5)


# -- defaults derived from sampling.rate_hz (docs/data.md, "What the defaults become") ------------------


def minimal(rate_hz: float, **extra) -> FeatureSpec:
    return FeatureSpec.from_dict({"name": "p", "time_column": "t", "columns": ["t", "a", "b"], "features": ["a", "b"],
                                  "sampling": {"rate_hz": rate_hz}, **extra}, "p.yaml")


@pytest.mark.parametrize("rate, length, stride, tolerance_s, max_gap_s, validation_gap_s", [
    (20.0, 100, 10, 60.0, 1.0, 30.0),
    (1.0, 10, 1, 120.0, 5.0, 144.0),
    (0.1, 10, 1, 1200.0, 50.0, 1440.0),
    (1 / 600, 10, 1, 72000.0, 3000.0, 86400.0),
])
def test_defaults_follow_the_sampling_rate(rate, length, stride, tolerance_s, max_gap_s, validation_gap_s):
    spec = minimal(rate)
    g = spec.geometry
    assert (g.length, g.stride) == (length, stride)
    assert spec.window_seconds == pytest.approx(length / rate)
    assert spec.windows.stride_s == pytest.approx(stride / rate)
    r = spec.rule()
    assert (r.k, r.n, r.m) == (DEFAULT_K, 20, 20)  # k of the windows within two windows' time; close after 20
    assert spec.evaluation.detection_tolerance_s == pytest.approx(tolerance_s)
    assert spec.evaluation.detection_tolerance_s == pytest.approx(12 * spec.window_seconds)  # 12 windows
    assert spec.windows.max_gap_s == pytest.approx(max_gap_s)
    assert spec.validation.max_gap_s == pytest.approx(validation_gap_s)
    assert spec.drift.baseline_s == pytest.approx(2 * spec.window_seconds)
    assert (spec.episodes.within_s, spec.episodes.open_after_s, spec.episodes.close_after_s) == pytest.approx(
        (2 * spec.window_seconds, OPEN_FRACTION * 2 * spec.window_seconds, 2 * spec.window_seconds))


def test_the_mini_turbine_rule_is_16_of_20_close_after_20():  # its YAML gives the episode seconds
    spec = default_spec()
    assert spec.rule() == EpisodeRule(k=16, n=20, m=20, missing_tolerance=0.15, max_silence_s=15.0,
                                      update_interval_s=30.0, release_ratio=RELEASE_RATIO)
    assert spec.evaluation.detection_tolerance_s == 60.0
    held = FeatureSpec.from_dict({**spec.to_dict(), "episodes": {**spec.to_dict()["episodes"], "release_ratio": 1.0}})
    assert RELEASE_RATIO == 0.8 and held.rule().release_ratio == 1.0  # a spec may turn the hysteresis off


def test_a_version_1_spec_converts_windows_in_samples_to_seconds():
    text = """
spec_version: 1
name: old-plant
time_column: ts
columns: [ts, a, b]
features: [a, b]
sampling: {rate_hz: 2.0}
windows: {length: 40, stride: 4, max_gap_s: 5}
"""
    old = parse_spec_text(text, "old.yaml")
    assert old.spec_version == 2  # read and converted
    assert (old.windows.length_s, old.windows.stride_s, old.windows.max_gap_s) == (20.0, 2.0, 5.0)
    assert (old.geometry.length, old.geometry.stride) == (40, 4)
    assert old.to_dict()["windows"] == {"length_s": 20.0, "stride_s": 2.0, "max_gap_s": 5.0}
    new = parse_spec_text(text.replace("spec_version: 1", "spec_version: 2")
                          .replace("{length: 40, stride: 4,", "{length_s: 20, stride_s: 2,"), "new.yaml")
    assert new == old and new.digest() == old.digest()
    # what the converted spec writes reads back as version 2
    assert FeatureSpec.from_dict(json.loads(json.dumps(old.to_dict()))) == old


def test_explicit_seconds_are_converted_to_samples_once():
    spec = default_spec()
    odd = FeatureSpec.from_dict(_raw(windows={"length_s": 5.02, "stride_s": 0.53, "max_gap_s": 1.0}))
    g = odd.geometry
    assert (g.length, g.stride) == (100, 11)  # round(100.4), round(10.6)
    assert odd.window_seconds == 5.0  # seconds of the samples the model scores, not the given 5.02
    # the rule divides the episode seconds by the rounded stride (0.55 s), once
    assert odd.rule() == EpisodeRule(k=15, n=18, m=19, missing_tolerance=0.15, max_silence_s=15.0,
                                     update_interval_s=30.0, release_ratio=RELEASE_RATIO)
    assert spec.geometry.length == 100


@pytest.mark.parametrize("section, values, key", [
    ("windows", {"length_s": 0.05}, "windows.length_s"),
    ("windows", {"length_s": 5.0, "stride_s": 6.0}, "windows.stride_s"),
    ("windows", {"stride_s": 0.01}, "windows.stride_s"),
    ("windows", {"max_gap_s": 0.01}, "windows.max_gap_s"),
    ("drift", {"baseline_s": -1}, "drift.baseline_s"),
    ("episodes", {"open_after_s": 12.0, "within_s": 10.0}, "open_after_s <= within_s"),
    ("episodes", {"close_after_s": 0}, "close_after_s > 0"),
    ("episodes", {"missing_tolerance": 1.0}, "missing_tolerance < 1"),
    ("episodes", {"release_ratio": 0}, "0 < release_ratio <= 1"),
    ("evaluation", {"detection_tolerance_s": -5}, "evaluation.detection_tolerance_s"),
    ("validation", {"max_gap_s": 0.5}, "max_gap_s >= windows.max_gap_s"),
    ("sampling", {"rate_hz": 0}, "sampling.rate_hz"),
    ("sampling", {"rate_hz": 20.0, "tolerance": 1.5}, "sampling.tolerance"),
    # not a finite number: NaN slips through every comparison, infinity overflows the conversion to samples
    ("drift", {"baseline_s": float("nan")}, "drift.baseline_s must be a finite number"),
    ("windows", {"length_s": float("inf")}, "windows.length_s must be a finite number"),
    ("windows", {"length_s": 5.0, "max_gap_s": float("nan")}, "windows.max_gap_s must be a finite number"),
    ("validation", {"max_gap_s": float("inf")}, "validation.max_gap_s must be a finite number"),
    ("validation", {"min_windows": 2.7}, "validation.min_windows must be a whole number"),
    ("evaluation", {"detection_tolerance_s": float("nan")}, "evaluation.detection_tolerance_s must be a finite"),
    ("sampling", {"rate_hz": float("inf")}, "sampling.rate_hz must be a finite number"),
    ("sampling", {"rate_hz": True}, "sampling.rate_hz must be a finite number"),
    ("episodes", {"within_s": "soon"}, "episodes.within_s must be a finite number"),
])
def test_bad_timescales_are_refused_with_the_key_named(section, values, key):
    raw = default_spec().to_dict()
    if section == "windows":  # change only what the case names; the rest keeps the defaults
        raw["windows"] = values
    else:
        raw[section] = {**raw[section], **values}
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        FeatureSpec.from_dict(raw, "my-spec.yaml")


@pytest.mark.parametrize("key", ["columns", "features", "text_columns"])
def test_names_must_be_a_list_not_a_string_read_letter_by_letter(key):
    raw = {**default_spec().to_dict(), key: "abc"}
    with pytest.raises(SpecError, match=f"{key} must be a list of names"):
        FeatureSpec.from_dict(raw, "my-spec.yaml")


@pytest.mark.parametrize("section", ["windows", "episodes"])
def test_a_section_that_is_not_a_mapping_is_refused_by_name(section):
    raw = {**default_spec().to_dict(), section: [1, 2]}
    with pytest.raises(SpecError, match=f"{section} must be a mapping"):
        FeatureSpec.from_dict(raw, "my-spec.yaml")


def test_drift_features_must_be_features_and_are_kept_in_feature_order():
    spec = default_spec()
    with pytest.raises(SpecError, match=r"drift\.features names 'ambtemp'"):
        FeatureSpec.from_dict(_raw(drift={"features": ["ambtemp"], "baseline_s": 10.0}))
    chosen = spec.with_drift(["voltage", "roll"])
    assert chosen.drift.features == ("roll", "voltage")
    assert chosen.drift_mask == (True, False, False, False, False, True)
    assert spec.with_drift([]).drift_mask == (False,) * 6
    assert FeatureSpec.from_dict(_raw(drift={"features": [], "baseline_s": 10.0})).geometry.context == 0


def test_a_long_baseline_subsamples_the_context():
    # a week of baseline on 10-minute records: 1008 samples before each 10-sample window
    spec = minimal(1 / 600, drift={"features": ["a"], "baseline_s": 604800})
    g = spec.geometry
    assert (g.length, g.context) == (10, 1008)
    assert g.context_step == 16 and g.context_inputs == 63
    assert g.width == g.context_inputs + g.length <= MAX_CONTEXT_SAMPLES + g.length
    assert g.total == 1018
    offsets = g.offsets()
    assert len(offsets) == g.width
    context, scored = offsets[:g.context_inputs], offsets[g.context_inputs:]
    assert all(o < 0 for o in context) and context[0] == -1008 and context == sorted(context)
    assert {b - a for a, b in pairwise(context)} == {g.context_step}
    assert scored == list(range(g.length))
    assert spec.context_seconds == pytest.approx(604800)


@pytest.mark.parametrize("baseline_s", [0.0, 1.0, 5.0, 64.0, 65.0, 1000.0, 12345.0])
def test_geometry_width_never_exceeds_the_context_cap(baseline_s):
    g = minimal(1.0, drift={"features": ["a"], "baseline_s": baseline_s}).geometry
    assert g.context == round(baseline_s)
    assert g.width <= MAX_CONTEXT_SAMPLES + g.length
    assert g.offsets()[g.context_inputs:] == list(range(g.length))
    assert all(-g.context <= o < 0 for o in g.offsets()[:g.context_inputs])


def test_without_drift_features_a_window_is_just_its_scored_samples():
    spec = minimal(1.0, drift={"features": []})
    g = spec.geometry
    assert (g.context, g.width, g.offsets()) == (0, 10, list(range(10)))
    assert spec.context_seconds == 0


def test_a_sampling_interval_in_seconds_is_the_same_spec_as_its_rate():
    def spec(sampling: dict) -> FeatureSpec:
        return FeatureSpec.from_dict({"name": "s", "time_column": "t", "columns": ["t", "a"], "features": ["a"],
                                      "sampling": sampling}, "scada.yaml")

    by_interval, by_rate = spec({"interval_s": 600, "tolerance": 0.1}), spec({"rate_hz": 1 / 600, "tolerance": 0.1})
    assert by_interval.sampling.interval_s == 600.0 and by_interval.digest() == by_rate.digest()
    assert "interval_s" not in by_interval.to_dict()["sampling"]


def test_a_json_spec_giving_a_key_twice_is_refused_naming_it():
    text = json.dumps(default_spec().to_dict())
    assert parse_spec_text(text, "spec.json") == default_spec()
    top = text.replace('"name": "mini-turbine"', '"name": "other", "name": "mini-turbine"')
    with pytest.raises(SpecError, match=r"^spec\.json: duplicate key 'name'$"):
        parse_spec_text(top, "spec.json")
    nested = text.replace('"sampling": {"rate_hz": 20.0', '"sampling": {"rate_hz": 50.0, "rate_hz": 20.0')
    with pytest.raises(SpecError, match=r"^spec\.json: duplicate key 'rate_hz'$"):
        parse_spec_text(nested, "spec.json")


def test_a_yaml_spec_giving_a_key_twice_is_refused_naming_it_and_its_line():
    text = ("name: p\ntime_column: t\ncolumns: [t, a]\nfeatures: [a]\n"
            "sampling:\n  rate_hz: 1.0\n  rate_hz: 20.0\n")
    with pytest.raises(SpecError, match=r"(?s)^spec\.yaml: not valid YAML or JSON: duplicate key 'rate_hz'.*line 7"):
        parse_spec_text(text, "spec.yaml")
    assert parse_spec_text(text.replace("  rate_hz: 20.0\n", ""), "spec.yaml").sampling.rate_hz == 1.0
