"""Context features (spec `context_features`): the model is conditioned on them, but their own errors never
raise an alarm; the other features are judged as before, in torch, in the ONNX graph and in a reloaded model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.errors import SpecError
from shared.ml.dataset import TurbineSeries
from shared.ml.injection import inject_generic
from shared.ml.spec import FeatureSpec
from training_jobs.bundle_io import load_model_dir, save_model_dir
from training_jobs.fit import fit_autoencoder, fit_pca, score_windows
from training_jobs.hyperparameters import Hyperparameters

BASE = {"name": "ctx", "time_column": "t", "columns": ["t", "a", "b", "c"], "features": ["a", "b", "c"],
        "sampling": {"rate_hz": 1.0}, "windows": {"length_s": 12, "stride_s": 2}, "drift": {"features": []}}
BASE_WRITTEN = FeatureSpec.from_dict(BASE).to_dict()
SPEC = FeatureSpec.from_dict({**BASE, "context_features": ["a"]})


def quiet(_: str) -> None:
    pass


def windows(n: int, seed: int) -> np.ndarray:
    """a is the weather; b follows it; c is independent."""
    rng = np.random.default_rng(seed)
    width = SPEC.geometry.width
    weather = rng.normal(0, 1, (n, 1, 1))
    x = np.concatenate([weather + rng.normal(0, 0.2, (n, 1, width)), 2 * weather + rng.normal(0, 0.3, (n, 1, width)),
                        rng.normal(5, 0.5, (n, 1, width))], axis=1)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    train = windows(300, 1)
    hp = Hyperparameters(epochs=2, seed=3)
    return {"pca": fit_pca(SPEC, train, hp, quiet).scorer,
            "conv1d": fit_autoencoder(SPEC, train, train[:50], hp, quiet).scorer}


def test_the_spec_reads_checks_and_writes_context_features():
    assert SPEC.context_features == ("a",) and SPEC.alarm_mask == (False, True, True)
    assert FeatureSpec.from_dict(SPEC.to_dict()) == SPEC
    plain = FeatureSpec.from_dict(BASE)
    assert plain.alarm_mask == (True, True, True)
    assert "context_features" not in plain.to_dict()  # specs without it keep the digests they had
    with pytest.raises(SpecError, match="context_features names 'wind', which is not one of the features"):
        FeatureSpec.from_dict({**BASE, "context_features": ["wind"]})
    with pytest.raises(SpecError, match="context_features are listed twice"):
        FeatureSpec.from_dict({**BASE, "context_features": ["a", "a"]})
    with pytest.raises(SpecError, match="context_features names every feature"):
        FeatureSpec.from_dict({**BASE, "context_features": ["a", "b", "c"]})
    with pytest.raises(SpecError, match="context_features must be a list of names"):
        FeatureSpec.from_dict({**BASE, "context_features": "a"})


@pytest.mark.parametrize("family", ["pca", "conv1d"])
def test_a_context_feature_adds_nothing_to_the_score_or_its_explanation(family, fitted):
    """The same fitted model with and without `a` as context: `a`'s contribution is 0, the others' are the same,
    and the score is the power mean without `a`'s term, so a freak reading of the weather alone raises no alarm."""
    probe = windows(40, 2)
    probe[:10, 0, :] += 6.0  # a weather extreme: six standard deviations, on `a` alone
    scorer = fitted[family]
    assert scorer.prep.alarm.flatten().tolist() == [0.0, 1.0, 1.0]  # fitted from the spec
    every = copy.deepcopy(scorer)
    every.prep.alarm.fill_(1.0)
    score, contributions, missing = score_windows(scorer, probe)
    score_all, contributions_all, missing_all = score_windows(every, probe)
    assert (contributions[:, 0] == 0).all() and (contributions_all[:10, 0] > 0).all()
    np.testing.assert_array_equal(contributions[:, 1:], contributions_all[:, 1:])
    np.testing.assert_allclose(score**4, score_all**4 - contributions_all[:, 0], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(missing, missing_all)  # a silent or stuck context sensor is still reported
    assert score_all[:10].min() > 3 * np.median(score_all[10:])  # counted, the extreme would stand out


@pytest.mark.parametrize("family", ["pca", "conv1d"])
def test_the_onnx_graph_and_a_reloaded_model_leave_the_context_feature_out_alike(family, fitted, tmp_path: Path):
    from tests.unit.test_model_io import manifest_for
    from training_jobs.compile import check_equivalence
    from training_jobs.onnx_export import export_onnx

    probe = windows(40, 2)
    probe[:10, 0, :] += 6.0
    scorer = fitted[family]
    export_onnx(scorer, 3, SPEC.geometry.width, tmp_path / "model.onnx")
    report = check_equivalence(tmp_path / "model.onnx", scorer, probe, threshold=1.0, atol=1e-5, rtol=1e-4)
    assert report["passed"] and report["flags"]["agree"]
    manifest = {**manifest_for(scorer), "feature_spec": SPEC.to_dict()}
    save_model_dir(tmp_path / "model", scorer, manifest)
    loaded = load_model_dir(tmp_path / "model").scorer
    for want, got in zip(score_windows(scorer, probe), score_windows(loaded, probe), strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_spec_decides_which_features_alarm_not_the_weights(fitted, tmp_path: Path):
    """The alarm weights are not saved with the weights (older weights never had them): the same weights under a
    spec without context_features score every feature."""
    from tests.unit.test_model_io import manifest_for

    scorer = fitted["pca"]
    save_model_dir(tmp_path / "model", scorer, {**manifest_for(scorer), "feature_spec": BASE_WRITTEN})
    assert not any(key.endswith("alarm") for key in torch.load(tmp_path / "model" / "model.pt", weights_only=True))
    loaded = load_model_dir(tmp_path / "model").scorer
    assert loaded.prep.alarm.flatten().tolist() == [1.0, 1.0, 1.0]
    every = copy.deepcopy(scorer)
    every.prep.alarm.fill_(1.0)
    probe = windows(40, 2)
    for want, got in zip(score_windows(every, probe), score_windows(loaded, probe), strict=True):
        np.testing.assert_array_equal(got, want)


def test_generic_faults_go_into_the_features_that_may_alarm_only():
    n = 4000
    rng = np.random.default_rng(0)
    series = TurbineSeries("m1", 1.7e9 + np.arange(n, dtype=np.float64), rng.normal(10, 1, (n, 3)).astype(np.float32))
    spec = FeatureSpec.from_dict({**BASE, "context_features": ["a", "c"]})
    copy_, faults = inject_generic(series, spec, seed=7)
    assert len(faults) >= 4
    changed = np.any(copy_.features != series.features, axis=0)
    assert changed.tolist() == [False, True, False]
