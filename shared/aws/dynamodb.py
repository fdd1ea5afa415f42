"""StateStore on one DynamoDB table: key `pk` (S, hash) + `sk` (S, range), other attributes plain JSON values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal, DecimalException
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from shared.errors import AdapterError, ConfigurationError

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()
_KEYS = ("pk", "sk")


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _to_dynamo(value: Any, path: str) -> Any:
    """A JSON value with floats as Decimal (TypeSerializer refuses float); anything else is refused."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"state attribute {path} is {value!r}: only finite numbers can be stored")
        return Decimal(repr(value))  # repr: the shortest string that reads back as the same float
    if isinstance(value, list | tuple):
        return [_to_dynamo(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ConfigurationError(f"state attribute {path} has a non-string map key")
        return {k: _to_dynamo(v, f"{path}.{k}") for k, v in value.items()}
    raise ConfigurationError(f"state attribute {path} is a {type(value).__name__}, not a JSON value")


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        # We write floats as repr() (always with '.' or an exponent) and ints as plain digits. DynamoDB may
        # normalise a number (1.0 -> 1), so an integral float can come back as an int of the same value.
        return int(value) if value.as_tuple().exponent == 0 else float(value)
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, set):  # never written by us; sets have no JSON form
        return sorted(_from_dynamo(v) for v in value)
    return value


def _serialize(value: Any, path: str) -> dict[str, Any]:
    try:
        return dict(_SERIALIZER.serialize(_to_dynamo(value, path)))
    except DecimalException as e:  # beyond DynamoDB's 38 digits / exponent range
        raise ConfigurationError(f"state attribute {path}: {value!r} does not fit a DynamoDB number") from e


def _item(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _serialize(value, name) for name, value in attributes.items()}


def _plain(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _from_dynamo(_DESERIALIZER.deserialize(value)) for name, value in item.items()}


class DynamoStateStore:
    """Items come back with their `pk` and `sk`. Reads are strongly consistent.

    `update_if` is one UpdateItem: it creates the item when it is missing and the condition holds (an upsert).
    An expected value of None matches an absent attribute or a stored null.
    """

    def __init__(self, table: str, client: Any = None) -> None:
        self.table = table
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("dynamodb")
        return self._client

    def get(self, pk: str, sk: str) -> dict[str, Any] | None:
        try:
            response = self.client.get_item(TableName=self.table, Key=_item({"pk": pk, "sk": sk}),
                                            ConsistentRead=True)
        except ClientError as e:
            raise AdapterError(f"DynamoDB GetItem {self.table} ({pk}, {sk}) failed: {_code(e)}") from e
        item = response.get("Item")
        return _plain(item) if item else None

    def put(self, pk: str, sk: str, item: Mapping[str, Any], if_absent: bool = False) -> bool:
        key = {"pk": pk, "sk": sk}
        for name, value in key.items():
            if name in item and item[name] != value:  # a dict from get() may be put back as it is
                raise ConfigurationError(f"item {name}={item[name]!r} contradicts the key ({pk}, {sk})")
        request: dict[str, Any] = {"TableName": self.table, "Item": _item({**item, **key})}
        if if_absent:
            request["ConditionExpression"] = "attribute_not_exists(pk)"
        try:
            self.client.put_item(**request)
        except ClientError as e:
            if if_absent and _code(e) == "ConditionalCheckFailedException":
                return False
            raise AdapterError(f"DynamoDB PutItem {self.table} ({pk}, {sk}) failed: {_code(e)}") from e
        return True

    def update_if(self, pk: str, sk: str, changes: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
        if not changes:
            raise ConfigurationError("update_if needs at least one change")
        if any(name in _KEYS for name in changes):
            raise ConfigurationError("update_if cannot change pk or sk")
        # Placeholders for every name and value: attribute names may be reserved words or contain dots.
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        assignments = []
        for i, (name, value) in enumerate(changes.items()):
            names[f"#c{i}"], values[f":c{i}"] = name, _serialize(value, name)
            assignments.append(f"#c{i} = :c{i}")
        conditions = []
        for i, (name, value) in enumerate(expected.items()):
            names[f"#e{i}"] = name
            if value is None:
                values[":null"] = {"NULL": True}
                conditions.append(f"(attribute_not_exists(#e{i}) OR #e{i} = :null)")
            else:
                # attribute_type: moto 5.2 finds BOOL true equal to N 1; DynamoDB compares typed anyway.
                values[f":e{i}"] = _serialize(value, name)
                dynamo_type = next(iter(values[f":e{i}"]))
                values[f":type_{dynamo_type}"] = {"S": dynamo_type}
                conditions.append(f"(#e{i} = :e{i} AND attribute_type(#e{i}, :type_{dynamo_type}))")
        request: dict[str, Any] = {
            "TableName": self.table, "Key": _item({"pk": pk, "sk": sk}),
            "UpdateExpression": "SET " + ", ".join(assignments),
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values,
        }
        if conditions:
            request["ConditionExpression"] = " AND ".join(conditions)
        try:
            self.client.update_item(**request)
        except ClientError as e:
            if _code(e) == "ConditionalCheckFailedException":
                return False
            raise AdapterError(f"DynamoDB UpdateItem {self.table} ({pk}, {sk}) failed: {_code(e)}") from e
        return True

    def delete(self, pk: str, sk: str) -> bool:
        try:
            reply = self.client.delete_item(TableName=self.table, Key=_item({"pk": pk, "sk": sk}),
                                            ReturnValues="ALL_OLD")
        except ClientError as e:
            raise AdapterError(f"DynamoDB DeleteItem {self.table} ({pk}, {sk}) failed: {_code(e)}") from e
        return bool(reply.get("Attributes"))

    def query(self, pk: str, sk_prefix: str = "") -> list[dict[str, Any]]:
        request: dict[str, Any] = {
            "TableName": self.table, "ConsistentRead": True,
            "KeyConditionExpression": "#pk = :pk",
            "ExpressionAttributeNames": {"#pk": "pk"}, "ExpressionAttributeValues": {":pk": {"S": pk}},
        }
        if sk_prefix:
            request["KeyConditionExpression"] += " AND begins_with(#sk, :prefix)"
            request["ExpressionAttributeNames"]["#sk"] = "sk"
            request["ExpressionAttributeValues"][":prefix"] = {"S": sk_prefix}
        items: list[dict[str, Any]] = []
        try:
            for page in self.client.get_paginator("query").paginate(**request):
                items.extend(_plain(item) for item in page.get("Items", []))
        except ClientError as e:
            raise AdapterError(f"DynamoDB Query {self.table} ({pk}, {sk_prefix}*) failed: {_code(e)}") from e
        return sorted(items, key=lambda item: str(item["sk"]))
