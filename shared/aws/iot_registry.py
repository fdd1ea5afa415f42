"""ThingRegistry on the AWS IoT registry: DescribeThing, ListThingPrincipals and ListThingGroupsForThing, nothing
that writes."""

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

    def _describe(self, thing_name: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.describe_thing(thingName=thing_name))
        except ClientError as e:
            if _code(e) == "ResourceNotFoundException":
                return None
            raise AdapterError(f"IoT DescribeThing {thing_name} failed: {_code(e)}") from e

    def thing_certificates(self, thing_name: str) -> tuple[str, ...] | None:
        if self._describe(thing_name) is None:
            return None
        ids: list[str] = []
        try:
            for page in self.client.get_paginator("list_thing_principals").paginate(thingName=thing_name):
                ids += [i for i in map(certificate_id, page.get("principals", [])) if i is not None]
        except ClientError as e:
            if _code(e) == "ResourceNotFoundException":  # deleted in between
                return None
            raise AdapterError(f"IoT ListThingPrincipals {thing_name} failed: {_code(e)}") from e
        return tuple(sorted(ids))

    def thing_attributes(self, thing_name: str) -> dict[str, str] | None:
        described = self._describe(thing_name)
        if described is None:
            return None
        return {str(k): str(v) for k, v in (described.get("attributes") or {}).items()}

    def thing_groups(self, thing_name: str) -> frozenset[str]:
        names: set[str] = set()
        try:
            for page in self.client.get_paginator("list_thing_groups_for_thing").paginate(thingName=thing_name):
                names |= {str(g["groupName"]) for g in page.get("thingGroups", [])}
        except ClientError as e:
            if _code(e) == "ResourceNotFoundException":
                return frozenset()
            raise AdapterError(f"IoT ListThingGroupsForThing {thing_name} failed: {_code(e)}") from e
        return frozenset(names)
