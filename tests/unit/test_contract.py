import json

import pytest

from shared.errors import ConfigurationError
from training_jobs.contract import from_environ, job_environ
from training_jobs.hyperparameters import Hyperparameters


def test_job_environ_round_trips_through_the_sagemaker_variables(tmp_path):
    env = job_environ(tmp_path / "job", "nacelle-abc-1", {"train": tmp_path / "data"},
                      {"epochs": 3, "target_false_alarms_per_day": 0.05, "families": "pca", "dataset_hash": "abc"})
    parsed = from_environ(env)
    assert parsed.job_name == "nacelle-abc-1"
    assert parsed.channel("train") == tmp_path / "data"
    assert parsed.model_dir == tmp_path / "job" / "model"
    assert parsed.failure_file == tmp_path / "job" / "output" / "failure"
    # SageMaker stores every hyperparameter as a string; they decode back to their types
    raw = json.loads((tmp_path / "job" / "input" / "config" / "hyperparameters.json").read_text())
    assert raw["epochs"] == "3"
    hp = Hyperparameters.from_mapping(parsed.hyperparameters)
    assert (hp.epochs, hp.target_false_alarms_per_day, hp.dataset_hash) == (3, 0.05, "abc")
    assert hp.candidates == ("pca",)


def test_strings_stay_strings_whatever_they_look_like(tmp_path):
    """A dataset hash of digits and one "e" is a string, not the float 0.0; script mode's quoted strings unquote."""
    env = job_environ(tmp_path, "j", {"train": tmp_path}, {"dataset_hash": "0e12", "families": '"pca"', "epochs": 3})
    hp = Hyperparameters.from_mapping(from_environ(env).hyperparameters)
    assert (hp.dataset_hash, hp.candidates, hp.epochs) == ("0e12", ("pca",), 3)


def test_sm_hps_wins_over_the_file(tmp_path):
    env = job_environ(tmp_path, "j", {"train": tmp_path}, {"epochs": 3})
    env["SM_HPS"] = json.dumps({"epochs": 7})
    assert from_environ(env).hyperparameters == {"epochs": 7}


def test_missing_train_channel_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="SM_CHANNEL_TRAIN"):
        from_environ({"SM_ROOT": str(tmp_path)})


@pytest.mark.parametrize("raw, fragment", [
    ({"epochz": 3}, "unknown hyperparameter"),
    ({"epochs": "many"}, "epochs='many'"),
    ({"target_false_alarms_per_day": 0}, "target_false_alarms_per_day"),
    ({"threshold_margin": -1}, "threshold_margin"),
    ({"families": "pca,xgboost"}, "families must be"),
    ({"families": ","}, "families must be"),
    ({"architecture": "lstm"}, "architecture"),
    ({"folds": 1}, r"folds=1 must lie in \[2, 50\]"),
    ({"min_samples": 1}, "min_samples"),
    ({"pca_variance": 1.0}, "pca_variance"),
    ({"val_fraction": 0.5, "test_fraction": 0.3}, "val_fraction"),
    ({"epochs": -1}, "epochs"),
    ({"k": 9, "n": 5}, "unknown hyperparameter"),  # the episode rule belongs to the spec now
])
def test_bad_hyperparameters_are_named(raw, fragment):
    with pytest.raises(ConfigurationError, match=fragment):
        Hyperparameters.from_mapping(raw)


def test_defaults_are_sized_from_the_data():
    hp = Hyperparameters()
    assert hp.candidates == ("pca", "conv1d")
    assert (hp.epochs, hp.batch_size, hp.patience) == (0, 0, 0)  # 0: from the data
    assert (hp.min_samples, hp.fold_below_samples, hp.folds) == (300, 20_000, 5)
    assert Hyperparameters.from_mapping({"sagemaker_program": "train.py"}) == hp  # script mode's own keys
