"""The spec's operating regime as a band: windows are scored while the operating feature's median is at least
`min` and none of its samples reaches `max` (a storm cut-out, and the stop and restart around it, is no anomaly);
`max` is optional and a spec without it keeps its meaning and its digest."""

from dataclasses import replace

import numpy as np
import pytest

from shared.errors import SpecError
from shared.ml.features import operating_mask
from shared.ml.spec import FeatureSpec, Operating, default_spec


def _spec(operating: dict) -> FeatureSpec:
    raw = default_spec().to_dict()
    raw["operating"] = operating
    return FeatureSpec.from_dict(raw, "test-spec")


def _windows(wind_rows: list[np.ndarray]) -> np.ndarray:
    spec = default_spec()
    x = np.zeros((len(wind_rows), spec.n_features, spec.geometry.width), dtype=np.float32)
    for i, row in enumerate(wind_rows):
        x[i, spec.features.index("wind_speed_rps"), -len(row):] = row
    return x


def test_windows_above_the_cut_out_or_below_the_cut_in_are_not_scored():
    spec = _spec({"feature": "wind_speed_rps", "min": 1.5, "max": 25.0})
    storm = np.full(100, 30.0)
    gusting = np.concatenate([np.full(95, 20.0), np.full(5, 25.0)])  # one gust to cut-out: a stop and restart
    calm_edge = np.concatenate([np.full(60, 2.0), np.full(40, 1.0)])  # median 2: idling into the regime
    below_max = np.full(100, 24.99)
    rows = [np.full(100, 10.0), storm, np.full(100, 1.0), gusting, calm_edge, np.full(100, 25.0), below_max]
    assert operating_mask(_windows(rows), spec).tolist() == [True, False, False, False, True, False, True]


def test_missing_readings_follow_the_median_of_the_rest_and_a_window_without_any_is_scored():
    spec = _spec({"feature": "wind_speed_rps", "min": 1.5, "max": 25.0})
    storm_with_gaps = np.full(100, 30.0)
    storm_with_gaps[:30] = np.nan
    producing_with_gaps = np.full(100, 10.0)
    producing_with_gaps[::3] = np.nan
    nothing = np.full(100, np.nan)
    rows = [storm_with_gaps, producing_with_gaps, nothing]
    assert operating_mask(_windows(rows), spec).tolist() == [False, True, True]


def test_without_max_the_regime_is_what_it_was():
    spec = default_spec()
    assert spec.operating is not None and spec.operating.max is None
    rows = [np.full(100, 30.0), np.full(100, 1.0), np.full(100, 1e6)]
    assert operating_mask(_windows(rows), spec).tolist() == [True, False, True]
    assert "max" not in spec.to_dict()["operating"]  # an unchanged spec keeps its digest
    banded = replace(spec, operating=Operating("wind_speed_rps", 1.5, 25.0))
    assert banded.digest() != spec.digest()
    assert FeatureSpec.from_dict(banded.to_dict()) == banded  # the band travels inside the bundle


@pytest.mark.parametrize(("operating", "reason"), [
    ({"feature": "wind_speed_rps", "min": 3.5, "max": 3.5}, "operating.max .* greater than operating.min"),
    ({"feature": "wind_speed_rps", "min": 3.5, "max": "fast"}, "test-spec"),
    ({"feature": "wind_speed_rps", "min": 3.5, "cut_out": 25}, "operating needs feature and min"),
    ({"feature": "wind_speed_rps"}, "operating needs feature and min"),
])
def test_a_malformed_band_is_refused_naming_the_key(operating, reason):
    with pytest.raises(SpecError, match=reason):
        _spec(operating)


def test_spec_check_shows_the_band():
    from nacelle.spec_tools import _render_settings, settings_of

    banded = _spec({"feature": "wind_speed_rps", "min": 1.5, "max": 25.0})
    lines = [line for line in _render_settings(settings_of(banded, banded, [])) if "operating" in line]
    assert lines == ["  operating        windows scored while median wind_speed_rps >= 1.5 and every value < 25"]
    plain = default_spec()
    assert [line for line in _render_settings(settings_of(plain, plain, [])) if "operating" in line] == [
        "  operating        windows scored while median wind_speed_rps >= 1.5"]
