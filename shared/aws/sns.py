"""Notifier on SNS topics, plus SNS's rules for subjects and attributes (the local stand-in applies them too)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.exceptions import ClientError

from shared.errors import AdapterError, ConfigurationError
from shared.ports import Topic

# The API reference says "less than 100 characters" while moto allows 100: stay one below.
SUBJECT_MAX = 99
# SNS attribute names: letters, digits, '_', '-', '.'; no leading/trailing/double dot; no AWS./Amazon. prefix.
_ATTRIBUTE_NAME = re.compile(r"(?!\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9_.-]{1,256}")
_RESERVED_PREFIXES = ("aws.", "amazon.")


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def sns_subject(subject: str) -> str:
    """One line without control characters, at most SUBJECT_MAX characters, cut at a word with an ellipsis."""
    text = " ".join("".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in subject).split())
    if len(text) <= SUBJECT_MAX:
        return text
    cut = text[: SUBJECT_MAX - 1]
    space = cut.rfind(" ")
    if space >= SUBJECT_MAX // 2:  # don't throw away half the subject to keep a word whole
        cut = cut[:space]
    return cut.rstrip() + "…"


def check_message(message: str, attributes: Mapping[str, str]) -> None:
    """Refuse what SNS Publish would refuse: an empty message, bad attribute names, empty or non-string values."""
    if not message:
        raise ConfigurationError("a notification needs a non-empty message")
    for name, value in attributes.items():
        if not _ATTRIBUTE_NAME.fullmatch(name) or name.lower().startswith(_RESERVED_PREFIXES):
            raise ConfigurationError(f"message attribute name {name!r} is not valid for SNS")
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"message attribute {name!r} must be a non-empty string, got {value!r}")


class SnsNotifier:
    """Attributes go out as DataType String, a JSON list included: SNS accepts it as a string. (AWS documents
    element-wise filter matching for String.Array only; moto also matches elements of a JSON-list String.)"""

    def __init__(self, topic_arns: Mapping[Topic, str], client: Any = None) -> None:
        self.topic_arns = dict(topic_arns)
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("sns")
        return self._client

    def publish(self, topic: Topic, subject: str, message: str, attributes: Mapping[str, str]) -> str:
        arn = self.topic_arns.get(topic)
        if not arn:
            raise ConfigurationError(f"no SNS topic ARN configured for topic {topic!r}")
        check_message(message, attributes)
        request: dict[str, Any] = {"TopicArn": arn, "Message": message}
        if clean := sns_subject(subject):  # an empty Subject is refused; omit it
            request["Subject"] = clean
        if attributes:
            request["MessageAttributes"] = {name: {"DataType": "String", "StringValue": value}
                                            for name, value in attributes.items()}
        try:
            return str(self.client.publish(**request)["MessageId"])
        except ClientError as e:
            raise AdapterError(f"SNS Publish to {arn} failed: {_code(e)}") from e
