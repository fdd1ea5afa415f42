"""AWS-shaped events the local stand-ins emit (S3 -> EventBridge, SageMaker job state changes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

from nacelle.local.adapters.paths import ACCOUNT, BUCKET, REGION
from shared.events import OBJECT_CREATED, PROCESSING_STATE_CHANGE, TRAINING_STATE_CHANGE

if TYPE_CHECKING:
    from nacelle.local.adapters.jobs import JobRecord

JOB_END = "job-end:"  # the dedup key of a job's end event (with its name): put once, whoever puts it


def object_created(bucket: str, key: str, size: int, etag: str, reason: str = "PutObject") -> dict[str, Any]:
    return {
        "version": "0", "detail-type": OBJECT_CREATED, "source": "aws.s3", "account": ACCOUNT,
        "region": REGION, "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket},
                   "object": {"key": quote_plus(key, safe="/"), "size": size, "etag": etag,
                              "sequencer": f"{int(datetime.now(UTC).timestamp() * 1e6):016X}"},
                   "request-id": "local", "requester": ACCOUNT, "source-ip-address": "127.0.0.1",
                   "reason": reason},
    }


def training_state_change(job: str, status: str, bucket: str, hyperparameters: dict[str, str],
                          created_at: datetime, failure_reason: str | None = None,
                          model_key: str | None = None) -> dict[str, Any]:
    ms = lambda t: int(t.timestamp() * 1000)  # noqa: E731 - SageMaker reports epoch milliseconds
    detail: dict[str, Any] = {
        "TrainingJobName": job,
        "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/{job}",
        "TrainingJobStatus": status, "SecondaryStatus": status,
        "HyperParameters": hyperparameters,
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/jobs"},
        "CreationTime": ms(created_at), "LastModifiedTime": ms(datetime.now(UTC)),
        "TrainingEndTime": ms(datetime.now(UTC)),
    }
    if failure_reason:
        detail["FailureReason"] = failure_reason
    if model_key:
        detail["ModelArtifacts"] = {"S3ModelArtifacts": f"s3://{bucket}/{model_key}"}
    return {"version": "0", "detail-type": TRAINING_STATE_CHANGE, "source": "aws.sagemaker", "account": ACCOUNT,
            "region": REGION, "resources": [detail["TrainingJobArn"]], "detail": detail}


def processing_state_change(job: str, status: str, bucket: str, output_prefix: str,
                            failure_reason: str | None = None) -> dict[str, Any]:
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:processing-job/{job}"
    detail: dict[str, Any] = {
        "ProcessingJobName": job, "ProcessingJobArn": arn, "ProcessingJobStatus": status,
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "bundle", "S3Output": {
            "S3Uri": f"s3://{bucket}/{output_prefix}", "LocalPath": "/opt/ml/processing/output",
            "S3UploadMode": "EndOfJob"}}]},
        "LastModifiedTime": int(datetime.now(UTC).timestamp() * 1000),
    }
    if failure_reason:
        detail["FailureReason"] = failure_reason
    return {"version": "0", "detail-type": PROCESSING_STATE_CHANGE, "source": "aws.sagemaker", "account": ACCOUNT,
            "region": REGION, "resources": [arn], "detail": detail}


def job_end_event(job: JobRecord) -> dict[str, Any]:
    """The state change event of an ended local job, as SageMaker sends it (its dedup key: JOB_END + name)."""
    if job.kind == "compile":
        return processing_state_change(job.name, job.status, BUCKET, job.request["output_prefix"], job.failure_reason)
    return training_state_change(job.name, job.status, BUCKET, job.request.get("hyperparameters", {}),
                                 datetime.fromisoformat(job.created_at), job.failure_reason, job.model_key)
