"""docs/data.md cannot rot: every YAML block is a complete spec that parses, the labels example loads,
and the figures the examples quote are what the specs give."""

from __future__ import annotations

import re
from pathlib import Path

from shared.ml.metrics import load_labels
from shared.ml.spec import FeatureSpec, parse_spec_text

DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```$", DOC.read_text(encoding="utf-8"), flags=re.M | re.S)


def specs() -> dict[str, FeatureSpec]:
    parsed = [parse_spec_text(text, f"docs/data.md yaml block {i + 1}") for i, text in enumerate(blocks("yaml"))]
    return {s.name: s for s in parsed}


def test_every_yaml_block_is_a_spec_that_parses():
    assert set(specs()) == {"my-plant", "pump-loop", "farm-scada"}


def test_the_labels_example_loads(tmp_path):
    (example,) = blocks("json")
    path = tmp_path / "labels.json"
    path.write_text(example)
    faults = load_labels(path)
    assert [(f.turbine_id, f.severity) for f in faults] == [("wt01", "high"), ("wt02", "medium")]
    assert faults[1].end - faults[1].start == 86_400


def test_the_examples_give_what_the_doc_says():
    pump = specs()["pump-loop"]
    assert (pump.delimiter, pump.sampling.rate_hz, pump.drift.features) == (";", 1.0, ("Temperature", "Thermocouple"))
    assert (pump.geometry.length, pump.geometry.context, pump.geometry.stride) == (10, 60, 1)
    rule = pump.rule()
    assert (rule.k, rule.n, rule.m) == (15, 20, 20)

    scada = specs()["farm-scada"]
    assert scada.operating is not None and (scada.operating.feature, scada.operating.min) == ("wind_speed", 3.5)
    assert scada.drift.baseline_s == 604_800 and scada.drift.features == ("ambient_temp",)
    assert scada.turbine_levels == ("gearbox_rise", "generator_rise", "nacelle_rise")
    assert scada.context_features == ("wind_speed", "ambient_temp")
    assert set(scada.input_columns) == set(scada.columns) - {"timestamp"}  # every raw temperature is read
    assert (scada.geometry.length, scada.geometry.total, scada.geometry.stride) == (10, 1018, 1)
    assert (scada.windows.length_s, scada.windows.max_gap_s, scada.validation.max_gap_s) == (6000, 3000, 86_400)
    assert (scada.episodes.open_after_s, scada.episodes.within_s, scada.episodes.close_after_s) == (9000, 12000, 12000)


def test_the_defaults_table_matches_the_spec_code():
    def derived(rate: str) -> tuple[float, ...]:
        s = parse_spec_text(f"name: x\ntime_column: t\ncolumns: [t, a]\nfeatures: [a]\nsampling: {{rate_hz: {rate}}}\n",
                            "table")
        r = s.rule()
        return (s.windows.length_s, s.geometry.length, s.windows.stride_s, s.windows.max_gap_s, s.drift.baseline_s,
                s.episodes.open_after_s, s.episodes.within_s, r.k, r.n, r.m, s.evaluation.detection_tolerance_s,
                s.validation.max_gap_s)

    assert derived("20") == (5, 100, 0.5, 1, 10, 7.5, 10, 15, 20, 20, 60, 30)
    assert derived("1") == (10, 10, 1, 5, 20, 15, 20, 15, 20, 20, 120, 144)
    assert derived("0.0016666666666666668") == (6000, 10, 600, 3000, 12000, 9000, 12000, 15, 20, 20, 72000, 86400)
