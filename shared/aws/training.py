"""TrainingService on SageMaker training jobs, in script mode (the framework container runs train_entry.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

from shared.aws.sagemaker_jobs import JOB_STATUSES, SageMakerJobs
from shared.errors import AdapterError, JobNotFound
from shared.ports import TrainingJob, TrainingRequest, TrainingStatus

ENTRY_POINT = "train_entry.py"
METRICS = ("event_f1", "event_precision", "event_recall", "recall_medium_high", "mean_delay_s", "point_f1",
           "false_alarms_per_turbine_day")
# The job prints `name=value` lines. \b keeps `champion_event_f1=` from matching `event_f1`; the one capture group
# is the number SageMaker records (lines with nan do not match, so no metric is recorded for them).
_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
METRIC_DEFINITIONS = [{"Name": name, "Regex": rf"\b{name}={_NUMBER}"} for name in METRICS]
VOLUME_GB = 10


def script_mode_hyperparameters(hyperparameters: Mapping[str, str], submit_directory: str,
                                region: str) -> dict[str, str]:
    """JSON-encode every value, as the SageMaker SDK does for framework estimators ('"train_entry.py"').

    The container JSON-decodes each value, so a string hyperparameter always comes back a string (a raw hex hash
    such as 1e5... would otherwise decode as a number).
    """
    raw: dict[str, str] = {**hyperparameters, "sagemaker_program": ENTRY_POINT,
                           "sagemaker_submit_directory": submit_directory, "sagemaker_region": region}
    return {str(key): json.dumps(value) for key, value in raw.items()}


class SageMakerTraining(SageMakerJobs):
    def __init__(self, bucket: str, image_uri: str, role_arn: str, instance_type: str, source_key: str, region: str,
                 client: Any = None, max_runtime_s: int = 3600) -> None:
        super().__init__(bucket, region, client)
        self.region_name = region  # script mode needs it as a hyperparameter
        self.image_uri = image_uri
        self.role_arn = role_arn
        self.instance_type = instance_type
        self.source_key = source_key  # sourcedir.tar.gz holding train_entry.py
        self.max_runtime_s = max_runtime_s

    def _channel(self, name: str, key: str, data_type: str) -> dict[str, Any]:
        return {"ChannelName": name, "DataSource": {"S3DataSource": {
            "S3DataType": data_type, "S3Uri": self.uri(key), "S3DataDistributionType": "FullyReplicated"}}}

    def job_request(self, request: TrainingRequest) -> dict[str, Any]:
        """The CreateTrainingJob parameters for a request."""
        channels = [self._channel("train", request.dataset_manifest_key, "ManifestFile")]
        if request.spec_key:
            channels.append(self._channel("spec", request.spec_key, "S3Prefix"))
        if request.champion_model_key:
            channels.append(self._channel("champion", request.champion_model_key, "S3Prefix"))
        params: dict[str, Any] = {
            "TrainingJobName": request.job_name,
            "AlgorithmSpecification": {"TrainingImage": self.image_uri, "TrainingInputMode": "File",
                                       "MetricDefinitions": METRIC_DEFINITIONS},
            "RoleArn": self.role_arn,
            "InputDataConfig": channels,
            "OutputDataConfig": {"S3OutputPath": self.uri("jobs")},
            "ResourceConfig": {"InstanceType": self.instance_type, "InstanceCount": 1, "VolumeSizeInGB": VOLUME_GB},
            "StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime_s},
            "HyperParameters": script_mode_hyperparameters(request.hyperparameters, self.uri(self.source_key),
                                                           self.region_name),
        }
        if request.tags:
            params["Tags"] = [{"Key": k, "Value": v} for k, v in request.tags.items()]
        return params

    def start(self, request: TrainingRequest) -> None:
        self.create_job(self.client.create_training_job, "CreateTrainingJob", request.job_name,
                        self.job_request(request))

    def describe(self, job_name: str) -> TrainingJob:
        job = self.describe_job(self.client.describe_training_job, "DescribeTrainingJob", job_name,
                                TrainingJobName=job_name)
        status = str(job["TrainingJobStatus"])
        if status not in JOB_STATUSES:  # "Deleting": the job is going away
            raise JobNotFound(f"training job {job_name} is {status}")
        # Only a completed job has a model; earlier, SageMaker may already show the path it will write.
        artifact = job.get("ModelArtifacts", {}).get("S3ModelArtifacts") if status == "Completed" else None
        prefix = f"s3://{self.bucket}/"
        if artifact and not str(artifact).startswith(prefix):
            raise AdapterError(f"training job {job_name} wrote its model outside {prefix}: {artifact}")
        return TrainingJob(
            job_name=job_name,
            status=cast(TrainingStatus, status),
            failure_reason=job.get("FailureReason"),
            model_artifact_key=str(artifact)[len(prefix):] if artifact else None,
        )

