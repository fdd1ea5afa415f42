"""ModelRegistry on the SageMaker Model Registry: one model package group per detector, one package per version."""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import boto3
from botocore.exceptions import ClientError

from shared.errors import AdapterError, ConfigurationError, ModelVersionNotFound
from shared.ports import ApprovalStatus, ModelVersion

TOKEN_KEY = "nacelle:token"  # CustomerMetadataProperties entry carrying register()'s idempotency token
CONTENT_TYPES = ["application/json"]

# SageMaker's CustomerMetadataMap limits (service model: CustomerMetadataKey/CustomerMetadataValue).
MAX_METADATA_ENTRIES = 50
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 256
_METADATA_PUNCTUATION = frozenset("_.:/=+-@")
MAX_APPROVAL_DESCRIPTION = 1024
_CLIENT_TOKEN = re.compile(r"[a-zA-Z0-9-]{1,36}")  # CreateModelPackage ClientToken
_TOKEN_NAMESPACE = uuid.UUID("5b0e7a52-3c0e-4c8e-9d55-0f6c2b7a1d10")
# Versioned packages always carry a status; SageMaker's default when none is given at creation.
_DEFAULT_STATUS: ApprovalStatus = "PendingManualApproval"
_STATUSES = frozenset({"PendingManualApproval", "Approved", "Rejected"})


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _allowed(text: str) -> bool:
    # [\p{L}\p{Z}\p{N}_.:\/=+\-@]* : letters, separators, numbers and a few punctuation marks.
    return all(unicodedata.category(ch)[0] in "LZN" or ch in _METADATA_PUNCTUATION for ch in text)


def validate_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Check a CustomerMetadataProperties map against SageMaker's limits; ConfigurationError names the first breach."""
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise ConfigurationError(f"model metadata has {len(metadata)} entries; SageMaker allows {MAX_METADATA_ENTRIES}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigurationError(f"model metadata {key!r}: keys and values must be strings")
        if not 1 <= len(key) <= MAX_METADATA_KEY or not _allowed(key):
            raise ConfigurationError(f"model metadata key {key[:40]!r}...: 1-{MAX_METADATA_KEY} characters from "
                                     "letters, digits, spaces and _.:/=+-@")
        if not 1 <= len(value) <= MAX_METADATA_VALUE or not _allowed(value):
            raise ConfigurationError(f"model metadata {key!r}: value must have 1-{MAX_METADATA_VALUE} characters "
                                     "from letters, digits, spaces and _.:/=+-@")
    return dict(metadata)


def client_token(idempotency_token: str) -> str:
    """ClientToken allows [a-zA-Z0-9-]{1,36}; longer or other tokens map to a deterministic uuid5."""
    if _CLIENT_TOKEN.fullmatch(idempotency_token):
        return idempotency_token
    return str(uuid.uuid5(_TOKEN_NAMESPACE, idempotency_token))


def approval_description(actor: str, reason: str) -> str:
    return f"{actor}: {reason}"[:MAX_APPROVAL_DESCRIPTION]


def _key_from_url(url: str) -> str:
    if not url.startswith("s3://") or "/" not in url[len("s3://"):]:
        raise AdapterError(f"model package has no s3:// ModelDataUrl: {url!r}")
    return url[len("s3://"):].split("/", 1)[1]


def _status(value: Any) -> ApprovalStatus:
    # moto's UpdateModelPackage drops the status when it is not resent; SageMaker itself always has one.
    if value is None:
        return _DEFAULT_STATUS
    if value not in _STATUSES:
        raise AdapterError(f"unexpected ModelApprovalStatus {value!r}")
    return cast(ApprovalStatus, value)


def to_model_version(package: Mapping[str, Any]) -> ModelVersion:
    """A DescribeModelPackage response as a ModelVersion."""
    containers = package.get("InferenceSpecification", {}).get("Containers", [])
    if not containers or "ModelDataUrl" not in containers[0]:
        raise AdapterError(f"model package {package.get('ModelPackageArn')} has no ModelDataUrl")
    return ModelVersion(
        group=str(package["ModelPackageGroupName"]),
        version=int(package["ModelPackageVersion"]),
        status=_status(package.get("ModelApprovalStatus")),
        model_data_key=_key_from_url(str(containers[0]["ModelDataUrl"])),
        metadata=dict(package.get("CustomerMetadataProperties") or {}),
        description=str(package.get("ModelPackageDescription", "")),
        created_at=package.get("CreationTime"),
        arn=str(package.get("ModelPackageArn", "")),
    )


class SageMakerRegistry:
    """Versions are SageMaker's ModelPackageVersion; metadata is CustomerMetadataProperties.

    register() is idempotent twice over: SageMaker's ClientToken, and (in case the token is not honoured, or
    has expired) a scan of the group's packages created within `token_lookback` for metadata
    `nacelle:token` == token, so a retried Lambda never registers the same model twice.

    `image_uri` is the inference image a registered package names. Without it the registry reads, sets statuses
    and metadata, and refuses to register (ConfigurationError).
    """

    def __init__(self, bucket: str, image_uri: str | None = None, client: Any = None,
                 token_lookback: timedelta = timedelta(days=1),
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.bucket = bucket
        self.image_uri = image_uri
        self.token_lookback = token_lookback
        self._client = client
        self._clock = clock
        self._arn_prefix: dict[str, str] = {}  # group -> "arn:...:model-package/<group as AWS spells it>"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("sagemaker")
        return self._client

    # -- groups -------------------------------------------------------------------------------------------------

    def _group_exists(self, group: str) -> bool:
        try:
            self.client.describe_model_package_group(ModelPackageGroupName=group)
            return True
        except ClientError as e:
            if _code(e) in ("ValidationException", "ResourceNotFound"):  # SageMaker: "... does not exist."
                return False
            raise AdapterError(f"SageMaker DescribeModelPackageGroup {group} failed: {_code(e)}") from e

    def ensure_group(self, group: str, description: str = "") -> None:
        # SageMaker reports an existing group as a plain ValidationException, so look before (and after) creating
        # instead of reading the error message.
        if self._group_exists(group):
            return
        params: dict[str, Any] = {"ModelPackageGroupName": group}
        if description:
            params["ModelPackageGroupDescription"] = description
        try:
            self.client.create_model_package_group(**params)
        except ClientError as e:
            if self._group_exists(group):  # created concurrently
                return
            raise AdapterError(f"SageMaker CreateModelPackageGroup {group} failed: {_code(e)}") from e

    # -- packages -----------------------------------------------------------------------------------------------

    def _describe(self, arn: str) -> Mapping[str, Any]:
        try:
            return cast(Mapping[str, Any], self.client.describe_model_package(ModelPackageName=arn))
        except ClientError as e:
            if _code(e) in ("ValidationException", "ResourceNotFound"):
                raise ModelVersionNotFound(f"no model package {arn}") from e
            raise AdapterError(f"SageMaker DescribeModelPackage {arn} failed: {_code(e)}") from e

    def _summaries(self, group: str, **filters: Any) -> Iterator[Mapping[str, Any]]:
        try:
            pages = self.client.get_paginator("list_model_packages").paginate(
                ModelPackageGroupName=group, ModelPackageType="Versioned", **filters)
            for page in pages:
                yield from page.get("ModelPackageSummaryList", [])
        except ClientError as e:
            raise AdapterError(f"SageMaker ListModelPackages {group} failed: {_code(e)}") from e

    def _arn(self, group: str, version: int) -> str:
        # DescribeModelPackage needs the ARN of a versioned package. Take its spelling (region, account, case of the
        # group) from a real package of the group instead of composing it from guesses.
        if group not in self._arn_prefix:
            first = next(self._summaries(group, SortBy="CreationTime", SortOrder="Ascending"), None)
            if first is None:
                raise ModelVersionNotFound(f"model package group {group} has no versions")
            self._arn_prefix[group] = str(first["ModelPackageArn"]).rsplit("/", 1)[0]
        return f"{self._arn_prefix[group]}/{version}"

    def _find_token(self, group: str, token: str) -> ModelVersion | None:
        since = self._clock() - self.token_lookback
        for summary in self._summaries(group, CreationTimeAfter=since, SortBy="CreationTime", SortOrder="Descending"):
            package = self._describe(str(summary["ModelPackageArn"]))
            if (package.get("CustomerMetadataProperties") or {}).get(TOKEN_KEY) == token:
                return to_model_version(package)
        return None

    def register(self, group: str, model_data_key: str, status: ApprovalStatus, description: str,
                 metadata: Mapping[str, str], idempotency_token: str) -> ModelVersion:
        if not self.image_uri:
            raise ConfigurationError("this SageMakerRegistry has no inference image URI: it cannot register")
        properties = validate_metadata({**metadata, TOKEN_KEY: idempotency_token})
        if self._group_exists(group):
            existing = self._find_token(group, idempotency_token)
            if existing is not None:
                return existing
        try:
            arn = self.client.create_model_package(
                ModelPackageGroupName=group,
                ModelPackageDescription=description,
                ModelApprovalStatus=status,
                InferenceSpecification={
                    "Containers": [{"Image": self.image_uri, "ModelDataUrl": f"s3://{self.bucket}/{model_data_key}"}],
                    "SupportedContentTypes": CONTENT_TYPES,
                    "SupportedResponseMIMETypes": CONTENT_TYPES,
                },
                CustomerMetadataProperties=properties,
                ClientToken=client_token(idempotency_token),
            )["ModelPackageArn"]
        except ClientError as e:
            if _code(e) == "ValidationException":  # unknown group, malformed field
                raise ConfigurationError(f"SageMaker CreateModelPackage in {group} rejected: {e}") from e
            raise AdapterError(f"SageMaker CreateModelPackage in {group} failed: {_code(e)}") from e
        self._arn_prefix.setdefault(group, str(arn).rsplit("/", 1)[0])
        return to_model_version(self._describe(str(arn)))

    def get(self, group: str, version: int) -> ModelVersion:
        return to_model_version(self._describe(self._arn(group, version)))

    def list(self, group: str, status: ApprovalStatus | None = None) -> list[ModelVersion]:
        filters: dict[str, Any] = {"SortBy": "CreationTime", "SortOrder": "Ascending"}
        if status is not None:
            filters["ModelApprovalStatus"] = status
        # Summaries carry neither the model data URL nor the metadata: describe each package.
        versions = [to_model_version(self._describe(str(summary["ModelPackageArn"])))
                    for summary in self._summaries(group, **filters)]
        return sorted(versions, key=lambda v: v.version)

    def _update(self, group: str, version: int, **changes: Any) -> ModelVersion:
        arn = self._arn(group, version)
        self._describe(arn)  # ModelVersionNotFound before any write
        try:
            self.client.update_model_package(ModelPackageArn=arn, **changes)
        except ClientError as e:
            raise AdapterError(f"SageMaker UpdateModelPackage {arn} failed: {_code(e)}") from e
        return to_model_version(self._describe(arn))

    def set_status(self, group: str, version: int, status: ApprovalStatus, reason: str, actor: str) -> ModelVersion:
        return self._update(group, version, ModelApprovalStatus=status,
                            ApprovalDescription=approval_description(actor, reason))

    def update_metadata(self, group: str, version: int, metadata: Mapping[str, str]) -> ModelVersion:
        # Send the whole merged map: correct whether SageMaker merges or replaces, and the 50-entry limit is checked
        # on what the package will hold. No ModelApprovalStatus: resending it could re-fire an "Approved" event.
        current = self.get(group, version)
        merged = validate_metadata({**current.metadata, **metadata})
        return self._update(group, version, CustomerMetadataProperties=merged)
