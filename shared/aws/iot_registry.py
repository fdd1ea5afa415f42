"""ThingRegistry on the AWS IoT registry: DescribeThing and ListThingPrincipals, nothing that writes."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.exceptions import ClientError

from shared.devices import certificate_id
from shared.errors import AdapterError


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class AwsThingRegistry:
    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("iot")
        return self._client

    def thing_certificates(self, thing_name: str) -> tuple[str, ...] | None:
        try:
            self.client.describe_thing(thingName=thing_name)
        except ClientError as e:
            if _code(e) == "ResourceNotFoundException":
                return None
            raise AdapterError(f"IoT DescribeThing {thing_name} failed: {_code(e)}") from e
        ids: list[str] = []
        try:
            for page in self.client.get_paginator("list_thing_principals").paginate(thingName=thing_name):
                ids += [i for i in map(certificate_id, page.get("principals", [])) if i is not None]
        except ClientError as e:
            if _code(e) == "ResourceNotFoundException":  # deleted in between
                return None
            raise AdapterError(f"IoT ListThingPrincipals {thing_name} failed: {_code(e)}") from e
        return tuple(sorted(ids))
