"""What the SageMaker job adapters (training, compile, Neo) share: a lazy client, S3 URIs, and the
translation of create/describe errors into our exceptions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
from botocore.exceptions import ClientError

from shared.errors import AdapterError, JobAlreadyExists, JobNotFound

JOB_STATUSES = frozenset({"InProgress", "Completed", "Failed", "Stopped", "Stopping"})


def error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class SageMakerJobs:
    """Base of one job adapter: the data bucket, the region and an injected (or lazy) client."""

    def __init__(self, bucket: str, region: str | None, client: Any = None) -> None:
        self.bucket = bucket
        self.region = region
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("sagemaker", region_name=self.region)
        return self._client

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @staticmethod
    def create_job(call: Callable[..., Any], operation: str, job_name: str, params: dict[str, Any]) -> None:
        """Create a job; its name is the idempotency key, so a taken name raises JobAlreadyExists."""
        try:
            call(**params)
        except ClientError as e:
            if error_code(e) == "ResourceInUse":
                raise JobAlreadyExists(f"{job_name} already exists") from e
            raise AdapterError(f"SageMaker {operation} {job_name} failed: {error_code(e)}") from e

    @staticmethod
    def describe_job(call: Callable[..., dict[str, Any]], operation: str, job_name: str,
                     **params: Any) -> dict[str, Any]:
        try:
            return call(**params)
        except ClientError as e:
            # SageMaker answers an unknown name with ValidationException ("... not found") or ResourceNotFound.
            if error_code(e) in ("ValidationException", "ResourceNotFound"):
                raise JobNotFound(f"no job {job_name}") from e
            raise AdapterError(f"SageMaker {operation} {job_name} failed: {error_code(e)}") from e
