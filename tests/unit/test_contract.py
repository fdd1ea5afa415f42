import json

import pytest

from shared.errors import ConfigurationError
from training_jobs.contract import from_environ, job_environ
from training_jobs.hyperparameters import Hyperparameters


def test_job_environ_round_trips_through_the_sagemaker_variables(tmp_path):
    env = job_environ(tmp_path / "job", "nacelle-abc-1", {"train": tmp_path / "data"},
                      {"epochs": 3, "threshold_quantile": 0.995, "dataset_hash": "abc"})
    parsed = from_environ(env)
    assert parsed.job_name == "nacelle-abc-1"
    assert parsed.channel("train") == tmp_path / "data"
    assert parsed.model_dir == tmp_path / "job" / "model"
    assert parsed.failure_file == tmp_path / "job" / "output" / "failure"
    # SageMaker stores every hyperparameter as a string; they decode back to their types
    raw = json.loads((tmp_path / "job" / "input" / "config" / "hyperparameters.json").read_text())
    assert raw["epochs"] == "3"
    hp = Hyperparameters.from_mapping(parsed.hyperparameters)
    assert (hp.epochs, hp.threshold_quantile, hp.dataset_hash) == (3, 0.995, "abc")


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
    ({"threshold_quantile": 1.5}, "threshold_quantile"),
    ({"k": 9, "n": 5}, "k <= n"),
])
def test_bad_hyperparameters_are_named(raw, fragment):
    with pytest.raises(ConfigurationError, match=fragment):
        Hyperparameters.from_mapping(raw)
