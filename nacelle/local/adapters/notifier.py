"""Notifier for the local stack (the SNS stand-in): every message is appended to a JSON-lines log, then handed to
the subscribers of a config file.

    subscribers:
      - {type: console, topics: [alerts], filter: {severity: [high, critical]}}
      - {type: jsonl, path: alerts.jsonl}                    # relative to the config file
      - {type: webhook, url: "http://127.0.0.1:9000/hook", headers: {X-Token: abc}}
      - {type: smtp, host: localhost, port: 1025, from: nacelle@localhost, to: [ops@example.com]}
        # optional: starttls: true, username: ..., password_env: NAME_OF_ENV_VAR

`topics` defaults to every topic. `filter` is an SNS filter policy on the message attributes: every key must
match, a value is one allowed string or a list of them (any of).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import smtplib
import socket
import ssl
import threading
import time
import urllib.request
import uuid
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, Protocol, get_args
from urllib.parse import urlsplit

import yaml

from shared.aws.sns import check_message, sns_subject
from shared.errors import AdapterError, ConfigurationError
from shared.ports import Topic
from shared.unique_keys import load_yaml, unique_keys

logger = logging.getLogger(__name__)

TOPICS: frozenset[str] = frozenset(get_args(Topic))
WEBHOOK_TIMEOUT_S = 5.0
SMTP_TIMEOUT_S = 10.0
_COMMON_KEYS = frozenset({"type", "topics", "filter", "name"})
_APPEND_LOCK = threading.Lock()


def _append_json_line(path: Path, record: Mapping[str, Any]) -> None:
    """One write() on an O_APPEND descriptor: concurrent writers (threads or processes) never interleave lines."""
    line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _APPEND_LOCK:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.write(fd, line) != len(line):
                raise OSError(f"short write to {path}")
        finally:
            os.close(fd)


class Target(Protocol):
    def deliver(self, entry: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class Console:
    def deliver(self, entry: Mapping[str, Any]) -> None:
        lines = [f"── [{entry['topic']}] {entry['subject']}", f"   {entry['time']}  id={entry['id']}"]
        if entry["attributes"]:
            lines.append("   " + "  ".join(f"{k}={v}" for k, v in sorted(entry["attributes"].items())))
        lines += ["   " + line for line in str(entry["message"]).splitlines()]
        print("\n".join(lines), flush=True)


@dataclass(frozen=True)
class JsonLines:
    path: Path

    def deliver(self, entry: Mapping[str, Any]) -> None:
        _append_json_line(self.path, entry)


@dataclass(frozen=True)
class Webhook:
    url: str
    headers: Mapping[str, str]

    def deliver(self, entry: Mapping[str, Any]) -> None:
        request = urllib.request.Request(
            self.url, data=json.dumps(entry).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "nacelle-local-notifier", **self.headers})
        # An http_proxy in the environment must not capture a loopback URL.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(urlsplit(self.url).hostname or "") else []
        with urllib.request.build_opener(*handlers).open(request, timeout=WEBHOOK_TIMEOUT_S) as response:
            response.read()  # urllib raises HTTPError for 4xx/5xx


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    starttls: bool = False
    username: str | None = None
    password_env: str | None = None

    def deliver(self, entry: Mapping[str, Any]) -> None:
        email = EmailMessage()
        email["Subject"] = f"[nacelle {entry['topic']}] {entry['subject']}"
        email["From"] = self.sender
        email["To"] = ", ".join(self.recipients)
        email["Date"] = format_datetime(datetime.now(UTC))
        email["Message-ID"] = make_msgid(domain="nacelle.local")  # no domain: a (slow) getfqdn() lookup
        email["X-Nacelle-Message-Id"] = str(entry["id"])
        attributes = "".join(f"{k}: {v}\n" for k, v in sorted(entry["attributes"].items()))
        email.set_content(f"{entry['message']}\n\n--\ntopic: {entry['topic']}\n{attributes}"
                          f"id: {entry['id']}\ntime: {entry['time']}\n")
        # local_hostname: smtplib's default EHLO name also comes from getfqdn().
        with smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT_S, local_hostname=socket.gethostname()) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username and self.password_env:
                smtp.login(self.username, os.environ.get(self.password_env, ""))
            smtp.send_message(email)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Subscription:
    name: str
    topics: frozenset[str]
    filter: Mapping[str, tuple[str, ...]]
    target: Target

    def matches(self, topic: str, attributes: Mapping[str, str]) -> bool:
        return topic in self.topics and all(attributes.get(k) in allowed for k, allowed in self.filter.items())


def _strings(value: Any, where: str) -> tuple[str, ...]:
    """A string or a non-empty list of strings."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise ConfigurationError(f"{where}: expected a string or a non-empty list of strings, got {value!r}")
    return tuple(values)


def _target(kind: str, raw: Mapping[str, Any], where: str, base_dir: Path) -> Target:
    def required(key: str) -> str:
        value = raw.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"{where}: {kind} subscriber needs a string {key!r}")
        return value

    if kind == "console":
        return Console()
    if kind == "jsonl":
        return JsonLines(base_dir / required("path"))
    if kind == "webhook":
        url = required("url")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"{where}: webhook url must be http(s)://host/..., got {url!r}")
        headers = raw.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ConfigurationError(f"{where}: webhook headers must map names to strings")
        return Webhook(url, {str(k): v for k, v in headers.items()})
    # smtp
    port = raw.get("port", 25)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigurationError(f"{where}: smtp port must be an integer 1-65535, got {port!r}")
    starttls = raw.get("starttls", False)
    if not isinstance(starttls, bool):
        raise ConfigurationError(f"{where}: smtp starttls must be true or false")
    username = raw.get("username")
    password_env = raw.get("password_env")
    if (username is None) != (password_env is None):
        raise ConfigurationError(f"{where}: smtp auth needs both 'username' and 'password_env'")
    return Smtp(host=required("host"), port=port, sender=raw.get("from", "nacelle@localhost"),
                recipients=_strings(raw.get("to"), f"{where}.to"), starttls=starttls,
                username=None if username is None else required("username"),
                password_env=None if password_env is None else required("password_env"))


_TARGET_KEYS: dict[str, frozenset[str]] = {
    "console": frozenset(),
    "jsonl": frozenset({"path"}),
    "webhook": frozenset({"url", "headers"}),
    "smtp": frozenset({"host", "port", "from", "to", "starttls", "username", "password_env"}),
}


def load_subscriptions(config_path: Path) -> list[Subscription]:
    """Parse and validate a subscribers file (YAML, or JSON for *.json); every problem is a ConfigurationError."""
    try:
        text = config_path.read_text(encoding="utf-8")
        doc = (json.loads(text, object_pairs_hook=unique_keys(lambda key: ValueError(f"duplicate key {key!r}")))
               if config_path.suffix == ".json" else load_yaml(text))
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigurationError(f"cannot read notifier config {config_path}: {e}") from e
    doc = {} if doc is None else doc
    if not isinstance(doc, dict) or set(doc) - {"subscribers"} or not isinstance(doc.get("subscribers", []), list):
        raise ConfigurationError(f"{config_path}: expected {{'subscribers': [...]}}")
    subscriptions = []
    for i, raw in enumerate(doc.get("subscribers") or []):
        where = f"{config_path}: subscribers[{i}]"
        if not isinstance(raw, dict) or raw.get("type") not in _TARGET_KEYS:
            raise ConfigurationError(f"{where}: 'type' must be one of {sorted(_TARGET_KEYS)}")
        kind = raw["type"]
        if unknown := set(raw) - _COMMON_KEYS - _TARGET_KEYS[kind]:
            raise ConfigurationError(f"{where}: unknown key(s) {sorted(unknown)} for a {kind} subscriber")
        topics = _strings(raw.get("topics", sorted(TOPICS)), f"{where}.topics")
        if bad := set(topics) - TOPICS:
            raise ConfigurationError(f"{where}: unknown topic(s) {sorted(bad)}; topics are {sorted(TOPICS)}")
        policy = raw.get("filter", {})
        if not isinstance(policy, dict):
            raise ConfigurationError(f"{where}: filter must map attribute names to allowed values")
        subscriptions.append(Subscription(
            name=str(raw.get("name") or f"{kind}#{i}"), topics=frozenset(topics),
            filter={str(k): _strings(v, f"{where}.filter.{k}") for k, v in policy.items()},
            target=_target(kind, raw, where, config_path.parent)))
    return subscriptions


class LocalNotifier:
    """`publish` returns once the message is in the log and every matching subscriber was tried: a failing
    subscriber is logged and skipped; only a failure to write the log raises (AdapterError).

    Subjects and attributes follow SNS's rules (shared.aws.sns), so what passes here passes on AWS.
    """

    def __init__(self, config_path: Path | None, log_path: Path) -> None:
        self.log_path = log_path
        self.subscriptions = tuple(load_subscriptions(config_path)) if config_path is not None else ()

    def publish(self, topic: Topic, subject: str, message: str, attributes: Mapping[str, str]) -> str:
        if topic not in TOPICS:
            raise ConfigurationError(f"unknown topic {topic!r}; topics are {sorted(TOPICS)}")
        check_message(message, attributes)
        entry: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "topic": topic, "subject": sns_subject(subject), "message": message, "attributes": dict(attributes),
        }
        try:
            _append_json_line(self.log_path, entry)
        except OSError as e:
            raise AdapterError(f"cannot append to notification log {self.log_path}: {e}") from e
        for subscription in self.subscriptions:
            if not subscription.matches(topic, attributes):
                continue
            try:
                subscription.target.deliver(entry)
            except Exception as e:  # any subscriber failure: log it, go on with the others
                logger.warning("notification delivery failed: id=%s topic=%s subscriber=%s error=%r",
                               entry["id"], topic, subscription.name, e)
        return entry["id"]

    def tail(self, follow: bool = False, poll_interval_s: float = 0.5) -> Generator[dict[str, Any], None, None]:
        """The log's entries from the start; with `follow`, then wait for new ones (forever)."""
        position, pending = 0, b""
        while True:
            chunk = b""
            try:
                with self.log_path.open("rb") as f:
                    if f.seek(0, os.SEEK_END) < position:  # truncated or replaced: start over
                        position, pending = 0, b""
                    f.seek(position)
                    chunk = f.read()
            except FileNotFoundError:
                pass
            position += len(chunk)
            *lines, pending = (pending + chunk).split(b"\n")  # the last piece is an unfinished line (or b"")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    logger.warning("skipping a malformed line in %s", self.log_path)
            if not follow:
                return
            if not chunk:
                time.sleep(poll_interval_s)
