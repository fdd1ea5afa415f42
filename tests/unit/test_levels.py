"""Per-turbine levels (spec `turbine_levels`): offsets read in training, stored in the manifest, subtracted in
float32 before scoring."""

import json
from dataclasses import replace

import numpy as np
import pytest

from shared.errors import BundleError, SpecError
from shared.ml.bundle import Manifest, offsets_row
from shared.ml.dataset import TurbineSeries
from shared.ml.injection import copy_id, source_turbine
from shared.ml.levels import at_turbine_level, relevel, turbine_offsets
from shared.ml.spec import FeatureSpec


def _spec(**changes) -> FeatureSpec:
    raw = {"spec_version": 2, "name": "farm", "time_column": "t", "time_format": "epoch_s",
           "columns": ["t", "wind", "bearing", "power"], "features": ["wind", "bearing", "power"],
           "sampling": {"interval_s": 600}, "operating": {"feature": "wind", "min": 3.5},
           "turbine_levels": ["bearing"]}
    raw.update(changes)
    return FeatureSpec.from_dict(raw)


def _series(turbine: str, bearing: float, n: int = 200, calm_bearing: float | None = None) -> TurbineSeries:
    rng = np.random.default_rng(len(turbine) + int(bearing))
    wind = np.full(n, 8.0)
    values = np.column_stack([wind, bearing + rng.normal(0, 0.1, n), rng.normal(500, 50, n)])
    if calm_bearing is not None:  # the second half in calm wind, the bearing cooled down
        values[n // 2:, 0] = 1.0
        values[n // 2:, 1] = calm_bearing
    return TurbineSeries(turbine, np.arange(n) * 600.0, values.astype(np.float32))


def test_each_turbine_is_placed_at_the_fleets_level_from_its_samples_in_the_operating_regime():
    spec = _spec()
    fleet = [_series("wt01", 40.0), _series("wt02", 42.0, calm_bearing=10.0), _series("wt03", 45.0)]
    offsets = turbine_offsets(fleet, spec)
    assert set(offsets) == {"wt01", "wt02", "wt03"}
    bearing = [offsets[t][1] for t in ("wt01", "wt02", "wt03")]
    assert bearing == pytest.approx([-2.0, 0.0, 3.0], abs=0.05)  # calm samples left out of wt02's level
    assert all(offsets[t][0] == 0.0 and offsets[t][2] == 0.0 for t in offsets)  # only the listed feature
    leveled = at_turbine_level(fleet, offsets)
    for before, after in zip(fleet, leveled, strict=True):
        expected = before.features - np.asarray(offsets[before.turbine_id], dtype=np.float32)
        assert after.features.dtype == np.float32 and np.array_equal(after.features, expected)
    assert fleet[0].features[0, 1] != leveled[0].features[0, 1]  # new arrays: the input is left as it was


def test_without_turbine_levels_nothing_is_read_or_changed():
    spec = _spec(turbine_levels=[])
    fleet = [_series("wt01", 40.0), _series("wt02", 45.0)]
    assert turbine_offsets(fleet, spec) == {}
    assert at_turbine_level(fleet, {}) == fleet
    assert "turbine_levels" not in spec.to_dict()  # specs without it keep the digests they had


def test_a_turbine_the_training_never_saw_keeps_its_level():
    assert offsets_row({"wt01": [1.0, 2.0]}, "wt09", 2).tolist() == [0.0, 0.0]
    assert offsets_row({"wt01": [1.0, 2.0]}, "wt01", 2).dtype == np.float32
    (elsewhere,) = at_turbine_level([_series("wt09", 40.0)], {"wt01": [0.0, 5.0, 0.0]})
    assert elsewhere.features[:, 1].mean() == pytest.approx(40.0, abs=0.05)


def test_turbine_levels_must_name_features_once():
    with pytest.raises(SpecError, match="turbine_levels names 'gearbox'"):
        _spec(turbine_levels=["gearbox"])
    with pytest.raises(SpecError, match="turbine_levels are listed twice"):
        _spec(turbine_levels=["bearing", "bearing"])
    with pytest.raises(SpecError, match="turbine_levels names 'wind', the operating"):
        _spec(turbine_levels=["wind"])
    with pytest.raises(SpecError, match="turbine_levels must be a list of names"):
        _spec(turbine_levels="bearing")
    spec = _spec()
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def _manifest(offsets) -> dict:
    spec = _spec().with_drift([])
    return {"format_version": 2, "feature_spec": spec.to_dict(), "model": {"family": "pca"},
            "normalisation": {"mean": [0.0] * 3, "std": [1.0] * 3, "turbine_offsets": offsets},
            "threshold": {"value": 1.0}, "episode_rule": {}, "metrics": {}, "lineage": {}}


@pytest.mark.parametrize("offsets, fragment", [
    ([1.0, 2.0, 3.0], "must map turbine ids to offsets"),
    ({"wt01": [1.0, 2.0]}, r"turbine_offsets\['wt01'\] must hold 3 finite numbers"),
    ({"wt01": [1.0, float("nan"), 0.0]}, "finite numbers"),
    ({"wt01": [1.0, True, 0.0]}, "finite numbers"),
])
def test_a_malformed_offsets_table_is_refused_naming_it(offsets, fragment):
    with pytest.raises(BundleError, match=fragment):
        Manifest.from_dict(_manifest(offsets), "manifest.json")


def test_the_manifest_gives_each_turbine_its_offsets():
    m = Manifest.from_dict(_manifest({"wt01": [0.0, 2.5, 0.0]}))
    assert m.offsets("wt01").tolist() == [0.0, 2.5, 0.0] and m.offsets("wt02").tolist() == [0.0, 0.0, 0.0]


def test_series_at_the_candidates_levels_move_to_the_champions():
    raw = [_series("wt01", 40.0), _series("wt02", 40.0)]
    candidate = {"wt01": [0.0, 1.0, 0.0]}
    champion = {"wt01": [0.0, 3.0, 0.0], "wt02": [0.0, -1.0, 0.0]}
    leveled = at_turbine_level(raw, candidate)
    leveled.append(replace(leveled[0], turbine_id=copy_id("wt01", 2)))  # an injected copy of the leveled series
    raw.append(replace(raw[0], turbine_id=copy_id("wt01", 2)))
    moved = relevel(leveled, candidate, champion)
    for before, after in zip(raw, moved, strict=True):
        expected = before.features[:, 1] - {"wt01": 3.0, "wt02": -1.0}[source_turbine(before.turbine_id)]
        np.testing.assert_allclose(after.features[:, 1], expected, atol=1e-5)
    assert relevel(raw, candidate, dict(candidate)) == raw  # the same levels: nothing to move


def test_a_copy_names_its_turbine_and_a_turbine_named_with_the_mark_stays_itself():
    assert source_turbine(copy_id("wt01", 3)) == "wt01" and source_turbine("wt01") == "wt01"
    assert source_turbine("line~a") == "line~a" and source_turbine(copy_id("line~a", 1)) == "line~a"
