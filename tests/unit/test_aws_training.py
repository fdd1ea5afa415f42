"""SageMakerTraining: the CreateTrainingJob request (Stubber checks it against the service model), error mapping, and
a start/describe round trip on moto (whose jobs report Completed at once and which accepts a duplicate name, so
JobAlreadyExists is tested with the Stubber only)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from shared.aws.training import METRIC_DEFINITIONS, METRICS, SageMakerTraining
from shared.errors import AdapterError, JobAlreadyExists, JobNotFound
from shared.ports import TrainingRequest

REGION = "eu-west-1"
BUCKET = "nacelle-data"
IMAGE = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.5-cpu-py311"
ROLE = "arn:aws:iam::123456789012:role/nacelle-training"
JOB = "nacelle-turbine-20260102-abcdef"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _training(client: Any) -> SageMakerTraining:
    return SageMakerTraining(BUCKET, IMAGE, ROLE, "ml.m5.large", "code/sourcedir.tar.gz", REGION, client=client,
                             max_runtime_s=1800)


def _stubbed() -> tuple[SageMakerTraining, Stubber]:
    client = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    return _training(client), Stubber(client)


def _request(**extra: Any) -> TrainingRequest:
    return TrainingRequest(job_name=JOB, dataset_manifest_key="datasets/nacelle-turbine/abc.json",
                           hyperparameters={"epochs": "40", "dataset_hash": "1e5"}, **extra)


def test_start_sends_the_script_mode_request() -> None:
    training, stub = _stubbed()
    request = _request(spec_key="specs/nacelle-turbine/mini-turbine.yaml",
                       champion_model_key="jobs/old/output/model.tar.gz", tags={"nacelle:group": "nacelle-turbine"})
    stub.add_response("create_training_job", {"TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:"
                                                                f"training-job/{JOB}"}, {
        "TrainingJobName": JOB,
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File",
                                   "MetricDefinitions": METRIC_DEFINITIONS},
        "RoleArn": ROLE,
        "InputDataConfig": [
            {"ChannelName": "train", "DataSource": {"S3DataSource": {
                "S3DataType": "ManifestFile", "S3Uri": f"s3://{BUCKET}/datasets/nacelle-turbine/abc.json",
                "S3DataDistributionType": "FullyReplicated"}}},
            {"ChannelName": "spec", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/specs/nacelle-turbine/mini-turbine.yaml",
                "S3DataDistributionType": "FullyReplicated"}}},
            {"ChannelName": "champion", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/jobs/old/output/model.tar.gz",
                "S3DataDistributionType": "FullyReplicated"}}},
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/jobs"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 1800},
        "HyperParameters": {
            "epochs": '"40"',
            "dataset_hash": '"1e5"',  # stays a string in the container, not the number 100000.0
            "sagemaker_program": '"train_entry.py"',
            "sagemaker_submit_directory": f'"s3://{BUCKET}/code/sourcedir.tar.gz"',
            "sagemaker_region": f'"{REGION}"',
        },
        "Tags": [{"Key": "nacelle:group", "Value": "nacelle-turbine"}],
    })
    with stub:
        training.start(request)
    stub.assert_no_pending_responses()


def test_optional_channels_and_tags_are_left_out() -> None:
    params = _training(client=None).job_request(_request())
    assert [c["ChannelName"] for c in params["InputDataConfig"]] == ["train"]
    assert "Tags" not in params


def test_hyperparameters_decode_as_the_container_does() -> None:
    decoded = {k: json.loads(v) for k, v in _training(client=None).job_request(_request())["HyperParameters"].items()}
    assert decoded == {"epochs": "40", "dataset_hash": "1e5", "sagemaker_program": "train_entry.py",
                       "sagemaker_submit_directory": f"s3://{BUCKET}/code/sourcedir.tar.gz",
                       "sagemaker_region": REGION}


def test_metric_regexes_read_the_job_log() -> None:
    log = "\n".join(["epoch 3 loss=0.1", "event_f1=0.93", "event_precision=1", "event_recall=0.875",
                     "recall_medium_high=0.5", "mean_delay_s=42.5", "point_f1=0.61",
                     "false_alarms_per_turbine_day=1.2e-05", "champion_event_f1=0.11", "champion_point_f1=0.2"])
    found = {d["Name"]: re.findall(d["Regex"], log) for d in METRIC_DEFINITIONS}
    assert found == {"event_f1": ["0.93"], "event_precision": ["1"], "event_recall": ["0.875"],
                     "recall_medium_high": ["0.5"], "mean_delay_s": ["42.5"], "point_f1": ["0.61"],
                     "false_alarms_per_turbine_day": ["1.2e-05"]}
    assert [d["Name"] for d in METRIC_DEFINITIONS] == list(METRICS)
    assert re.findall(METRIC_DEFINITIONS[0]["Regex"], "event_f1=nan") == []


def test_a_taken_name_is_job_already_exists() -> None:
    training, stub = _stubbed()
    stub.add_client_error("create_training_job", "ResourceInUse", "Training job names must be unique")
    with stub, pytest.raises(JobAlreadyExists):
        training.start(_request())


def test_other_create_errors_are_adapter_errors() -> None:
    training, stub = _stubbed()
    stub.add_client_error("create_training_job", "ResourceLimitExceeded", "quota")
    with stub, pytest.raises(AdapterError):
        training.start(_request())


def _described(status: str, **extra: Any) -> dict[str, Any]:
    return {"TrainingJobName": JOB, "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{JOB}",
            "TrainingJobStatus": status, "SecondaryStatus": "Completed" if status == "Completed" else "Training",
            "StoppingCondition": {"MaxRuntimeInSeconds": 1800}, "CreationTime": NOW, **extra}


def test_describe_completed_job_gives_the_model_key() -> None:
    training, stub = _stubbed()
    stub.add_response("describe_training_job", _described("Completed", ModelArtifacts={
        "S3ModelArtifacts": f"s3://{BUCKET}/jobs/{JOB}/output/model.tar.gz"}), {"TrainingJobName": JOB})
    with stub:
        job = training.describe(JOB)
    assert (job.status, job.failure_reason, job.model_artifact_key) == (
        "Completed", None, f"jobs/{JOB}/output/model.tar.gz")


def test_describe_failed_job_gives_the_reason_and_no_model() -> None:
    training, stub = _stubbed()
    stub.add_response("describe_training_job", _described("Failed", FailureReason="AlgorithmError: too little data",
                                                          ModelArtifacts={"S3ModelArtifacts": ""}),
                      {"TrainingJobName": JOB})
    with stub:
        job = training.describe(JOB)
    assert (job.status, job.failure_reason, job.model_artifact_key) == (
        "Failed", "AlgorithmError: too little data", None)


def test_describe_unknown_job_is_job_not_found() -> None:
    training, stub = _stubbed()
    stub.add_client_error("describe_training_job", "ValidationException", "Requested resource not found.")
    with stub, pytest.raises(JobNotFound):
        training.describe("nope")


def test_start_and_describe_on_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        training = _training(boto3.client("sagemaker", region_name=REGION))
        training.start(_request(spec_key="specs/nacelle-turbine/mini-turbine.yaml"))
        job = training.describe(JOB)
        with pytest.raises(JobNotFound):
            training.describe("never-started")
    assert job.status == "Completed"  # moto completes jobs at once
    assert job.model_artifact_key == f"jobs/{JOB}/output/model.tar.gz"
