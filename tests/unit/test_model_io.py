"""A model saved with save_model_dir and loaded with load_model_dir scores bit for bit like before saving."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.ml.bundle import BUNDLE_FORMAT_VERSION, read_manifest
from shared.ml.spec import FeatureSpec
from training_jobs.bundle_io import load_model, load_model_dir, pack_model_dir, save_model_dir
from training_jobs.fit import fit_autoencoder, fit_pca, score_windows
from training_jobs.hyperparameters import Hyperparameters
from training_jobs.model import torch_threads

SPEC = FeatureSpec.from_dict({
    "name": "io", "time_column": "t", "columns": ["t", "a", "b", "c"], "features": ["a", "b", "c"],
    "sampling": {"rate_hz": 1.0}, "windows": {"length_s": 12, "stride_s": 2},
    "drift": {"features": ["c"], "baseline_s": 20},  # a context before the scored samples, too
})


def windows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = SPEC.geometry
    base = rng.normal(0, 1, (n, 1, 1))
    x = np.concatenate([base + rng.normal(0, 0.3, (n, 1, g.width)), 2 * base + rng.normal(0, 0.3, (n, 1, g.width)),
                        50 + np.cumsum(rng.normal(0, 0.1, (n, 1, g.width)), axis=2)], axis=1)
    return x.astype(np.float32)


def manifest_for(scorer, threshold: float = 1.5) -> dict:
    g = SPEC.geometry
    return {
        "format_version": BUNDLE_FORMAT_VERSION, "feature_spec": SPEC.to_dict(),
        "model": {**scorer.describe(), "n_features": 3, "context": g.context_inputs, "length": g.length,
                  "inputs": {"windows": ["batch", 3, g.width]}},
        "normalisation": {"mean": scorer.prep.mean.flatten().tolist(), "std": scorer.prep.std.flatten().tolist()},
        "threshold": {"value": threshold}, "episode_rule": SPEC.rule().to_dict(), "metrics": {},
        "lineage": {"job_name": "io-test"},
    }


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    train, probe = windows(300, 1), windows(40, 2)
    probe[::5, 1, -4:] = np.nan  # missing samples take the graph's NaN path
    probe[3, 2, :] = np.nan
    return train, probe


@pytest.fixture(scope="module")
def fitted(data):
    train, _ = data
    hp = Hyperparameters(epochs=2, seed=3)
    return {"pca": fit_pca(SPEC, train, hp, quiet, glitch_filter=True),
            "conv1d": fit_autoencoder(SPEC, train, train[:50], hp, quiet, glitch_filter=True)}


@pytest.mark.parametrize("family", ["pca", "conv1d"])
def test_a_saved_model_scores_bit_for_bit_like_before(family, data, fitted, tmp_path: Path):
    _, probe = data
    scorer = fitted[family].scorer
    before = score_windows(scorer, probe)
    assert np.isfinite(before[0]).all() and before[0].std() > 0

    save_model_dir(tmp_path / "model", scorer, manifest_for(scorer))
    loaded = load_model_dir(tmp_path / "model")
    assert loaded.manifest.family == family and loaded.manifest.threshold == 1.5
    after = score_windows(loaded.scorer, probe)
    for want, got in zip(before, after, strict=True):
        np.testing.assert_array_equal(got, want)
    archive = pack_model_dir(tmp_path / "model", tmp_path / "model.tar.gz")  # and through the archive
    for want, got in zip(before, score_windows(load_model(archive).scorer, probe), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("family", ["pca", "conv1d"])
def test_a_saved_model_keeps_every_value_in_buffers_of_its_own(family, data, fitted, tmp_path: Path):
    _, probe = data
    scorer = fitted[family].scorer
    save_model_dir(tmp_path / "model", scorer, manifest_for(scorer))
    loaded = load_model_dir(tmp_path / "model")
    state = loaded.scorer.state_dict()
    for name, value in scorer.state_dict().items():
        assert torch.equal(state[name], value), name
    pointers = [v.data_ptr() for v in state.values() if v.numel()]
    assert len(pointers) == len(set(pointers))  # load_state_dict writes into each buffer in place
    for want, got in zip(score_windows(scorer, probe), score_windows(loaded.scorer, probe), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_manifest_is_checked_on_the_way_out(fitted, tmp_path: Path):
    from shared.errors import BundleError

    pca = fitted["pca"]
    bad = manifest_for(pca.scorer)
    bad["threshold"] = {"value": 0.0}
    with pytest.raises(BundleError, match=r"threshold\.value"):
        save_model_dir(tmp_path / "m", pca.scorer, bad)
    unresolved = manifest_for(pca.scorer)
    unresolved["feature_spec"] = {**SPEC.to_dict(), "drift": {"features": "auto", "baseline_s": 20}}
    with pytest.raises(BundleError, match="auto"):
        save_model_dir(tmp_path / "m", pca.scorer, unresolved)
    save_model_dir(tmp_path / "ok", pca.scorer, manifest_for(pca.scorer))
    assert read_manifest(tmp_path / "ok").spec == SPEC


@pytest.mark.parametrize("family", ["pca", "conv1d"])
def test_a_fitted_model_keeps_its_values_in_the_layout_a_loaded_one_has(family, fitted):
    state = fitted[family].scorer.state_dict()
    assert [name for name, value in state.items() if not value.is_contiguous()] == []


@pytest.mark.parametrize("family", ["pca", "conv1d"])
def test_the_onnx_graph_of_a_drift_model_agrees_with_torch(family, data, fitted, tmp_path: Path):
    """The session's trained models judge no feature against a baseline: this one does (context 20)."""
    from training_jobs.compile import check_equivalence, nan_variants
    from training_jobs.onnx_export import export_onnx

    _, probe = data
    g = SPEC.geometry
    assert g.context_inputs == 20 and g.width == 32
    scorer = fitted[family].scorer
    export_onnx(scorer, 3, g.width, tmp_path / "model.onnx")
    x = np.concatenate([probe, nan_variants(probe[:8], np.random.default_rng(0))])
    x[-2, 2, :g.context_inputs] = np.nan  # no baseline sample: the window's own mean
    report = check_equivalence(tmp_path / "model.onnx", scorer, np.ascontiguousarray(x), threshold=1.0,
                               atol=1e-5, rtol=1e-4)
    assert report["passed"] and report["flags"]["agree"]


def test_small_batches_fit_on_one_thread_with_the_same_result_and_the_threads_come_back(data):
    """Sharing a few thousand inputs per step between threads costs more than it gains (twice the time on the
    400-row 1 Hz runs); large batches keep the threads they were given."""
    train, _ = data
    hp = Hyperparameters(epochs=1, seed=3)
    said: list[str] = []
    with torch_threads(2):
        shared = fit_autoencoder(SPEC, train, train[:50], hp, said.append)
        assert torch.get_num_threads() == 2
        fit_autoencoder(SPEC, train, train[:50], Hyperparameters(epochs=1, seed=3, batch_size=1000), said.append)
    assert [line for line in said if "thread" in line] == [
        "autoencoder: 1 thread (batches of 37 x 3 x 32 inputs are too small to share)"]
    with torch_threads(1):
        alone = fit_autoencoder(SPEC, train, train[:50], hp, quiet)
    for name, value in alone.scorer.state_dict().items():
        assert torch.equal(value, shared.scorer.state_dict()[name]), name


@pytest.mark.parametrize("family", ["pca", "conv1d"])
def test_a_sensor_frozen_over_a_window_is_reported_missing_and_the_onnx_graph_agrees(family, data, fitted,
                                                                                     tmp_path: Path):
    """A stuck reading (one value over the window) says as little as no reading: the feature is flagged."""
    from training_jobs.compile import check_equivalence
    from training_jobs.onnx_export import export_onnx

    _, probe = data
    scorer = fitted[family].scorer
    assert scorer.prep.frozen_check.flatten().tolist() == [1.0, 1.0, 1.0]  # none stood still in training
    g = SPEC.geometry
    frozen = probe[[1, 2, 4, 6]].copy()  # windows without missing samples
    frozen[0, 0, g.context_inputs:] = frozen[0, 0, g.context_inputs]  # 'a' stuck
    frozen[1, 2, g.context_inputs:] = 50.0  # 'c' stuck, a drifting feature
    frozen[1, 2, g.context_inputs + 3] = np.nan  # a gap in a frozen stretch changes nothing
    frozen[2, 1, g.context_inputs:-1] = np.nan  # a single value is missing data, not frozen
    _, _, missing = score_windows(scorer, frozen)
    assert missing[0].tolist() == [1.0, 0.0, 0.0] and missing[1].tolist() == [0.0, 0.0, 1.0]
    assert missing[2, 1] == pytest.approx((g.length - 1) / g.length) and missing[3].tolist() == [0.0, 0.0, 0.0]
    export_onnx(scorer, 3, g.width, tmp_path / "model.onnx")
    report = check_equivalence(tmp_path / "model.onnx", scorer, np.ascontiguousarray(frozen), threshold=1.0,
                               atol=1e-5, rtol=1e-4)
    assert report["passed"] and report["flags"]["agree"]


def test_a_feature_that_stands_still_in_training_or_too_few_windows_leave_the_frozen_check_off(data, fitted):
    from training_jobs.fit import FROZEN_CHECK_WINDOWS, frozen_check_for

    train, _ = data
    g = SPEC.geometry
    scored = train[:, :, g.context_inputs:].copy()
    scored[7, 1, :] = 3.0  # 'b' held one value over one training window (a setpoint, a coarse reading)
    prep = fitted["pca"].scorer.prep
    assert frozen_check_for(prep, scored).tolist() == [1.0, 0.0, 1.0]
    assert frozen_check_for(prep, scored[:FROZEN_CHECK_WINDOWS - 1]).tolist() == [0.0, 0.0, 0.0]


RISE = {"name": "rise", "time_column": "t", "columns": ["t", "ambient", "bearing"],
        "features": ["ambient", "bearing_rise"],
        "derived": [{"name": "bearing_rise", "kind": "difference",
                     "inputs": {"value": "bearing", "reference": "ambient"}}],
        "sampling": {"rate_hz": 1.0}, "windows": {"length_s": 12, "stride_s": 2}, "drift": {"features": []}}


def rise_windows(ambient: np.ndarray, bearing: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(W, 2, L) feature windows of (W, L) raw readings, computed as the job and the device compute them."""
    from shared.ml.features import compute_features

    features = compute_features({"ambient": ambient.ravel(), "bearing": bearing.ravel()}, spec)
    return np.ascontiguousarray(features.reshape(*ambient.shape, 2).transpose(0, 2, 1))


def test_a_stuck_sensor_behind_a_rise_over_ambient_is_reported_missing_in_torch_onnx_and_a_reloaded_model(
        tmp_path: Path):
    from shared.errors import BundleError
    from training_jobs.compile import check_equivalence
    from training_jobs.onnx_export import export_onnx
    from training_jobs.train import frozen_checked

    spec = FeatureSpec.from_dict(RISE)
    assert spec.hidden_inputs == ((0, 0.0), (0, 1.0))  # bearing = bearing_rise + ambient
    value_too = FeatureSpec.from_dict({**RISE, "features": ["ambient", "bearing", "bearing_rise"]})
    assert value_too.hidden_inputs == ((0, 0.0), (1, 0.0), (2, 0.0))  # both inputs are checked themselves
    value_only = FeatureSpec.from_dict({**RISE, "features": ["bearing", "bearing_rise"]})
    assert value_only.hidden_inputs == ((0, 0.0), (0, -1.0))  # ambient = bearing - bearing_rise

    rng = np.random.default_rng(5)
    width = spec.geometry.width
    ambient = 12.0 + np.cumsum(rng.normal(0, 0.05, (300, width)), axis=1) + rng.normal(0, 5, (300, 1))
    bearing = ambient + 25.0 + rng.normal(0, 0.2, (300, width))
    scorer = fit_pca(spec, rise_windows(ambient, bearing, spec), Hyperparameters(seed=3), quiet).scorer
    assert scorer.prep.frozen_check.flatten().tolist() == [1.0, 1.0]
    assert frozen_checked(spec, [1.0, 1.0]) == ["ambient", "bearing_rise (and bearing behind it)"]  # the log
    assert frozen_checked(value_only, [0.0, 1.0]) == ["bearing_rise (and ambient behind it)"]

    ambient, bearing = ambient[:4].copy(), bearing[:4].copy()
    bearing[1] = 41.372618  # the bearing sensor stuck; its rise over ambient still moves
    ambient[2] = 9.8137  # ambient stuck: the rise moves with the bearing, which works
    bearing[3] = np.round(bearing[3, 0] + 0.01 * (np.arange(width) % 2), 2)  # a working sensor barely moving
    probe = rise_windows(ambient, bearing, spec)
    assert len(np.unique(probe[1, 1])) > 1  # the rise itself never stands still
    _, _, missing = score_windows(scorer, probe)
    assert missing.tolist() == [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]

    export_onnx(scorer, 2, width, tmp_path / "model.onnx")
    report = check_equivalence(tmp_path / "model.onnx", scorer, probe, threshold=1.0)
    assert report["passed"] and report["outputs"]["missing"]["max_abs_diff"] == 0.0
    manifest = {**manifest_for(scorer), "feature_spec": spec.to_dict()}
    manifest["model"].update(n_features=2, inputs={"windows": ["batch", 2, width]})
    save_model_dir(tmp_path / "model", scorer, manifest)
    _, _, reloaded = score_windows(load_model_dir(tmp_path / "model").scorer, probe)
    np.testing.assert_array_equal(reloaded, missing)

    weights = tmp_path / "model" / "model.pt"
    state = torch.load(weights, weights_only=True)
    torch.save({**state, "prep.partner": torch.tensor([0, 2])}, weights)
    with pytest.raises(BundleError, match=r"prep\.partner must index the 2 features"):
        load_model_dir(tmp_path / "model")
    del state["prep.partner"], state["prep.partner_sign"]  # weights from before the check looked behind
    torch.save(state, weights)
    _, _, older = score_windows(load_model_dir(tmp_path / "model").scorer, probe)
    assert older.tolist() == [[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]  # scored as it was trained


def test_weights_saved_before_the_frozen_check_tail_powers_and_glitch_filter_load_as_they_were_trained(
        data, fitted, tmp_path: Path):
    import copy

    _, probe = data
    scorer = fitted["pca"].scorer
    save_model_dir(tmp_path / "model", scorer, manifest_for(scorer))
    weights = tmp_path / "model" / "model.pt"
    state = torch.load(weights, weights_only=True)
    del state["prep.frozen_check"], state["tail_power"], state["prep.glitch_limit"]
    torch.save(state, weights)
    loaded = load_model_dir(tmp_path / "model").scorer
    assert loaded.prep.frozen_check.flatten().tolist() == [0.0, 0.0, 0.0]  # the check stays off
    assert loaded.tail_power.flatten().tolist() == [1.0, 1.0, 1.0]  # errors in their 99th percentile
    assert loaded.prep.glitch_limit.flatten().tolist() == [math.inf] * 3  # no reading is a glitch
    unfiltered = copy.deepcopy(scorer)
    unfiltered.prep.glitch_limit.fill_(math.inf)
    for want, got in zip(score_windows(unfiltered, probe), score_windows(loaded, probe), strict=True):
        np.testing.assert_array_equal(got, want)  # no window of the probe is frozen


@pytest.mark.parametrize("family", ["pca", "conv1d"])
def test_a_lone_glitch_barely_moves_the_score_two_in_a_row_do_and_the_onnx_graph_agrees(family, data, fitted,
                                                                                      tmp_path: Path):
    """A logger's bad reading (one sample far off) is not an anomaly; the same value held for two samples is."""
    import copy

    from training_jobs.compile import check_equivalence
    from training_jobs.onnx_export import export_onnx

    _, probe = data
    scorer = fitted[family].scorer
    g = SPEC.geometry
    clean = probe[[1, 2, 4, 6]].copy()  # windows without missing samples
    middle = g.context_inputs + g.length // 2
    glitch, pair = clean.copy(), clean.copy()
    glitch[:, 0, middle] += 50.0  # 'a': its noise is 0.3
    pair[:, 0, middle:middle + 2] += 50.0
    base, lone, held = (score_windows(scorer, x)[0] for x in (clean, glitch, pair))
    threshold = float(np.quantile(score_windows(scorer, probe)[0], 0.99))
    assert (lone < threshold).all() and (held > 10 * threshold).all()
    np.testing.assert_allclose(lone, base, rtol=0.5)
    unfiltered = copy.deepcopy(scorer)
    unfiltered.prep.glitch_limit.fill_(math.inf)
    assert (score_windows(unfiltered, glitch)[0] > 10 * threshold).all()  # what the filter takes away
    x = np.concatenate([glitch, pair])
    x[0, 0, middle + 1] = np.nan  # a glitch beside a missing reading stays
    export_onnx(scorer, 3, g.width, tmp_path / "model.onnx")
    report = check_equivalence(tmp_path / "model.onnx", scorer, np.ascontiguousarray(x), threshold=threshold,
                               atol=1e-5, rtol=1e-4)
    assert report["passed"] and report["flags"]["agree"]


def test_every_feature_error_gets_one_tail_shape_when_enough_windows_show_it():
    from training_jobs.fit import MIN_TAIL_WINDOWS, TAIL_RATIO, tail_powers, typical

    rng = np.random.default_rng(4)
    n = MIN_TAIL_WINDOWS + 2_000
    errors = np.column_stack([rng.lognormal(0.0, 1.0, n),  # gusty: rare errors far beyond the usual
                              np.abs(rng.normal(0.0, 1.0, n)),  # steady
                              np.full(n, 2.0)])  # no spread: left alone
    power = tail_powers(errors)
    assert power[0] < 1.0 < power[1] and power[2] == 1.0
    mapped = (errors / typical(errors)) ** power
    high = np.quantile(mapped[:, :2], 0.999, axis=0)
    np.testing.assert_allclose(high, TAIL_RATIO, rtol=1e-6)  # both reach the same level at their 99.9th
    assert tail_powers(errors[:MIN_TAIL_WINDOWS - 1]).tolist() == [1.0, 1.0, 1.0]  # too few to read it


@pytest.mark.parametrize("family", ["pca", "conv1d"])
def test_a_model_with_tail_powers_saves_loads_and_exports_alike(family, data, fitted, tmp_path: Path):
    import copy

    from training_jobs.compile import check_equivalence
    from training_jobs.onnx_export import export_onnx

    _, probe = data
    scorer = copy.deepcopy(fitted[family].scorer)
    plain = score_windows(scorer, probe)
    scorer.tail_power.copy_(torch.tensor([[0.6, 1.0, 2.5]]))
    shaped = score_windows(scorer, probe)
    assert not np.array_equal(shaped[1][:, 0], plain[1][:, 0])  # the powers are in the graph
    np.testing.assert_array_equal(shaped[1][:, 1], plain[1][:, 1])
    save_model_dir(tmp_path / "model", scorer, manifest_for(scorer))
    for want, got in zip(shaped, score_windows(load_model_dir(tmp_path / "model").scorer, probe), strict=True):
        np.testing.assert_array_equal(got, want)
    export_onnx(scorer, 3, SPEC.geometry.width, tmp_path / "model.onnx")
    report = check_equivalence(tmp_path / "model.onnx", scorer, np.ascontiguousarray(probe), threshold=1.0,
                               atol=1e-5, rtol=1e-4)
    assert report["passed"] and report["flags"]["agree"]
