"""ObjectStore on one S3 bucket."""

from __future__ import annotations

import time
from typing import Any

import boto3
from botocore.exceptions import ClientError

from shared.errors import AdapterError, ObjectNotFound
from shared.ports import ObjectInfo

# GetObject says NoSuchKey; HeadObject has no body, so botocore only sees the status ("404").
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
# S3 answers 409 when another conditional write to the same key is in flight; AWS says retry.
_CONFLICT_RETRIES = 3


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class S3ObjectStore:
    """`put_if_absent` is a conditional PutObject (If-None-Match: *), atomic in S3 itself (moto 5.2 honours it)."""

    def __init__(self, bucket: str, client: Any = None) -> None:
        self.bucket = bucket
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("s3")
        return self._client

    def get(self, key: str) -> bytes:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            return bytes(body.read())
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                raise ObjectNotFound(f"no object {self.uri(key)}") from e
            raise AdapterError(f"S3 GetObject {self.uri(key)} failed: {_code(e)}") from e

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                raise ObjectNotFound(f"no object {self.uri(key)}") from e
            raise AdapterError(f"S3 HeadObject {self.uri(key)} failed: {_code(e)}") from e

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except ClientError as e:
            raise AdapterError(f"S3 PutObject {self.uri(key)} failed: {_code(e)}") from e

    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        attempt = 0
        while True:
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                                       IfNoneMatch="*")
                return True
            except ClientError as e:
                code = _code(e)
                if code == "PreconditionFailed":  # 412: the key exists, nothing written
                    return False
                attempt += 1
                if code != "ConditionalRequestConflict" or attempt >= _CONFLICT_RETRIES:
                    raise AdapterError(f"S3 conditional PutObject {self.uri(key)} failed: {code}") from e
                time.sleep(0.1 * attempt)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as e:
            # A 403 here usually means the role lacks s3:ListBucket (S3 then hides 404s): not "absent".
            if _code(e) in _NOT_FOUND:
                return False
            raise AdapterError(f"S3 HeadObject {self.uri(key)} failed: {_code(e)}") from e

    def list(self, prefix: str) -> list[ObjectInfo]:
        infos: list[ObjectInfo] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                infos.extend(ObjectInfo(key=obj["Key"], size=int(obj["Size"]), etag=str(obj["ETag"]).strip('"'))
                             for obj in page.get("Contents", []))
        except ClientError as e:
            raise AdapterError(f"S3 ListObjectsV2 {self.uri(prefix)} failed: {_code(e)}") from e
        return sorted(infos, key=lambda info: info.key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"
