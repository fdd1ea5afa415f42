"""Notifier contract: SnsNotifier (moto, read back through SQS), LocalNotifier (read back from its log) and the
RecordingNotifier double deliver the same subject, message and attributes; then the local subscribers."""

from __future__ import annotations

import email
import json
import logging
import socket
import threading
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.notifier import LocalNotifier
from shared.aws.sns import SnsNotifier
from shared.errors import ConfigurationError

from .conftest import NotifierHarness

ATTRIBUTES = {"severity": "high", "turbine_id": "T07", "turbines": '["T01", "T02"]', "model.version": "12"}


# --- every implementation ----------------------------------------------------------------------------------------

def test_subject_message_and_attributes_are_delivered(notifier_harness: NotifierHarness) -> None:
    message = json.dumps({"episode": "e-1", "score": 0.93})
    message_id = notifier_harness.notifier.publish("alerts", "Anomaly on T07", message, ATTRIBUTES)
    [delivered] = notifier_harness.delivered()
    assert message_id and delivered.id == message_id
    assert (delivered.topic, delivered.subject, delivered.message) == ("alerts", "Anomaly on T07", message)
    assert delivered.attributes == ATTRIBUTES  # the JSON list arrives as the same string


def test_each_topic_is_separate(notifier_harness: NotifierHarness) -> None:
    ids = {topic: notifier_harness.notifier.publish(topic, f"on {topic}", "body", {})
           for topic in ("alerts", "approvals", "data_quality")}
    assert {d.id: d.topic for d in notifier_harness.delivered()} == {v: k for k, v in ids.items()}
    assert {d.attributes == {} for d in notifier_harness.delivered()} == {True}


def test_a_long_multiline_subject_is_cut_cleanly(notifier_harness: NotifierHarness) -> None:
    subject = "Model v12 failed the gate:\n" + "event F1 below threshold " * 10 + "\tend"
    notifier_harness.notifier.publish("approvals", subject, "details", {})
    [delivered] = notifier_harness.delivered()
    one_line = " ".join(subject.split())
    kept = delivered.subject.removesuffix("…")
    assert len(delivered.subject) <= 100 and kept != delivered.subject
    assert one_line.startswith(kept) and one_line[len(kept)] == " "  # cut between words
    assert len(kept) > 80 and not any(ch in kept for ch in "\n\t\r")


def test_control_characters_are_removed_from_subjects(notifier_harness: NotifierHarness) -> None:
    notifier_harness.notifier.publish("alerts", "  a\x00b\r\nc\x7f  ", "m", {})
    assert notifier_harness.delivered()[0].subject == "a b c"


def test_a_blank_subject_is_allowed(notifier_harness: NotifierHarness) -> None:
    notifier_harness.notifier.publish("alerts", " \n ", "m", {})
    assert notifier_harness.delivered()[0].subject == ""


@pytest.mark.parametrize(("message", "attributes"), [
    ("", {}), ("m", {"empty": ""}), ("m", {"bad name": "x"}), ("m", {"AWS.reserved": "x"}),
    ("m", {".dot": "x"}), ("m", {"a..b": "x"}), ("m", {"n": 3}),
], ids=["empty-message", "empty-value", "space-in-name", "aws-prefix", "leading-dot", "double-dot", "not-a-string"])
def test_what_sns_refuses_is_refused(notifier_harness: NotifierHarness, message: str,
                                     attributes: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        notifier_harness.notifier.publish("alerts", "s", message, attributes)
    assert notifier_harness.delivered() == []


def test_sns_topic_without_arn_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="approvals"):
        SnsNotifier({"alerts": "arn:aws:sns:eu-west-1:123456789012:a"}, client=object()).publish(
            "approvals", "s", "m", {})


# --- local: the log and tail ---------------------------------------------------------------------------------------

def test_local_log_has_one_json_line_per_message(tmp_path: Path) -> None:
    log = tmp_path / "deep" / "notifications.jsonl"
    notifier = LocalNotifier(None, log)
    first = notifier.publish("alerts", "one", "m1", {"severity": "low"})
    second = notifier.publish("approvals", "two", "m2\nline 2", {})
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    entry = json.loads(lines[0])
    assert set(entry) == {"id", "time", "topic", "subject", "message", "attributes"}
    assert entry["id"] == first and entry["time"].endswith("Z")
    assert json.loads(lines[1])["id"] == second and json.loads(lines[1])["message"] == "m2\nline 2"


def test_tail_skips_an_unfinished_line(tmp_path: Path) -> None:
    notifier = LocalNotifier(None, tmp_path / "n.jsonl")
    assert list(notifier.tail()) == []  # no log yet
    notifier.publish("alerts", "s", "m", {})
    with (tmp_path / "n.jsonl").open("a") as f:
        f.write('{"id": "half-writ')
    assert [e["subject"] for e in notifier.tail()] == ["s"]


def test_tail_follow_yields_new_entries(tmp_path: Path) -> None:
    notifier = LocalNotifier(None, tmp_path / "n.jsonl")
    first = notifier.publish("alerts", "first", "m", {})
    entries = notifier.tail(follow=True, poll_interval_s=0.01)
    assert next(entries)["id"] == first
    publisher = threading.Timer(0.1, notifier.publish, args=("alerts", "second", "m", {}))
    publisher.start()
    assert next(entries)["subject"] == "second"  # waits for it
    publisher.join()
    entries.close()


# --- local: subscribers ------------------------------------------------------------------------------------------

def write_config(tmp_path: Path, subscribers: list[dict[str, Any]], name: str = "subscribers.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"subscribers": subscribers}))  # JSON is YAML too
    return path


def test_console_subscriber_with_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, [{"type": "console", "topics": ["alerts"],
                                      "filter": {"severity": ["high", "critical"]}}])
    notifier = LocalNotifier(config, tmp_path / "n.jsonl")
    notifier.publish("alerts", "Anomaly on T07", "score 0.93\nepisode e-1", {"severity": "high", "turbine": "T07"})
    notifier.publish("alerts", "Minor", "m", {"severity": "low"})
    notifier.publish("alerts", "No severity", "m", {})
    notifier.publish("approvals", "Other topic", "m", {"severity": "high"})
    out = capsys.readouterr().out
    assert "[alerts] Anomaly on T07" in out and "severity=high  turbine=T07" in out and "   episode e-1" in out
    assert "Minor" not in out and "No severity" not in out and "Other topic" not in out
    assert len(list(notifier.tail())) == 4  # the log has everything


def test_filter_is_exact_on_string_values(tmp_path: Path) -> None:
    # Like SNS on a String attribute: a JSON list value is one string, not its elements.
    config = write_config(tmp_path, [{"type": "jsonl", "path": "out.jsonl", "filter": {"turbines": "T02"}},
                                     {"type": "jsonl", "path": "all.jsonl", "filter": {"severity": "high"}}])
    notifier = LocalNotifier(config, tmp_path / "n.jsonl")
    notifier.publish("alerts", "s", "m", {"turbines": '["T01", "T02"]', "severity": "high"})
    notifier.publish("alerts", "s", "m", {"turbines": "T02", "severity": "high"})
    assert [json.loads(line)["attributes"]["turbines"] for line in (tmp_path / "out.jsonl").read_text().splitlines()
            ] == ["T02"]
    assert len((tmp_path / "all.jsonl").read_text().splitlines()) == 2


def test_jsonl_subscriber_path_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    config = write_config(tmp_path / "conf", [{"type": "jsonl", "path": "out/approvals.jsonl",
                                               "topics": ["approvals"]}], name="subscribers.json")
    notifier = LocalNotifier(config, tmp_path / "n.jsonl")
    message_id = notifier.publish("approvals", "Approve v3?", "m", {"group": "g"})
    notifier.publish("alerts", "not for it", "m", {})
    [line] = (tmp_path / "conf" / "out" / "approvals.jsonl").read_text().splitlines()
    assert json.loads(line)["id"] == message_id


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, list[tuple[dict[str, str], Any]]]]:
    received: list[tuple[dict[str, str], Any]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()
    thread.join()


def test_webhook_subscriber_posts_json(tmp_path: Path, webhook_server: tuple[str, list[Any]],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # must be ignored for a loopback URL
    url, received = webhook_server
    config = write_config(tmp_path, [{"type": "webhook", "url": url, "headers": {"X-Token": "t0k"}}])
    message_id = LocalNotifier(config, tmp_path / "n.jsonl").publish("alerts", "Anomaly", "m", ATTRIBUTES)
    [(headers, body)] = received
    assert headers["Content-Type"] == "application/json" and headers["X-Token"] == "t0k"
    assert body["id"] == message_id and body["subject"] == "Anomaly" and body["attributes"] == ATTRIBUTES


class FakeSmtpServer:
    """Just enough SMTP on a loopback socket to accept one message."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.envelope: list[str] = []
        self.messages: list[Message] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rb") as lines:
            def reply(text: str) -> None:
                conn.sendall(f"{text}\r\n".encode())

            reply("220 fake ESMTP")
            while line := lines.readline():
                verb = line.decode().strip().split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    reply("250 fake")
                elif verb in ("MAIL", "RCPT"):
                    self.envelope.append(line.decode().strip().split(":", 1)[1])
                    reply("250 OK")
                elif verb == "DATA":
                    reply("354 end with <CRLF>.<CRLF>")
                    data = []
                    while (chunk := lines.readline()) != b".\r\n":
                        data.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                    self.messages.append(email.message_from_bytes(b"".join(data)))
                    reply("250 queued")
                elif verb == "QUIT":
                    reply("221 bye")
                    return
                else:
                    reply("502 not implemented")

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def smtp_server() -> Iterator[FakeSmtpServer]:
    server = FakeSmtpServer()
    yield server
    server.close()


def test_smtp_subscriber_sends_an_email(tmp_path: Path, smtp_server: FakeSmtpServer) -> None:
    config = write_config(tmp_path, [{"type": "smtp", "host": "127.0.0.1", "port": smtp_server.port,
                                      "from": "nacelle@localhost", "to": ["ops@example.com", "oncall@example.com"]}])
    message_id = LocalNotifier(config, tmp_path / "n.jsonl").publish(
        "alerts", "Anomaly on T07", "score 0.93", {"severity": "high"})
    smtp_server.thread.join(timeout=5)
    [mail] = smtp_server.messages
    assert mail["Subject"] == "[nacelle alerts] Anomaly on T07"
    assert mail["To"] == "ops@example.com, oncall@example.com"
    assert mail["X-Nacelle-Message-Id"] == message_id
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes) and b"score 0.93" in body and b"severity: high" in body
    assert smtp_server.envelope == ["<nacelle@localhost>", "<ops@example.com>", "<oncall@example.com>"]


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def test_failing_subscribers_do_not_block_the_others(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a-directory.jsonl").mkdir()
    config = write_config(tmp_path, [
        {"type": "webhook", "name": "dead-hook", "url": f"http://127.0.0.1:{closed_port()}/"},
        {"type": "smtp", "name": "dead-smtp", "host": "127.0.0.1", "port": closed_port(), "to": "a@b.c"},
        {"type": "jsonl", "name": "bad-path", "path": "a-directory.jsonl"},
        {"type": "jsonl", "name": "good", "path": "good.jsonl"},
    ])
    notifier = LocalNotifier(config, tmp_path / "n.jsonl")
    with caplog.at_level(logging.WARNING, logger="nacelle.local.adapters.notifier"):
        message_id = notifier.publish("alerts", "s", "m", {})
    assert json.loads((tmp_path / "good.jsonl").read_text())["id"] == message_id
    assert [e["id"] for e in notifier.tail()] == [message_id]  # never lost
    failed = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"subscriber={name}" in failed for name in ("dead-hook", "dead-smtp", "bad-path"))
    assert message_id in failed


@pytest.mark.parametrize("subscriber", [
    {"type": "pager"}, {"type": "console", "colour": "red"}, {"type": "console", "topics": ["alarms"]},
    {"type": "console", "topics": []}, {"type": "console", "filter": {"severity": []}},
    {"type": "console", "filter": {"severity": [3]}}, {"type": "jsonl"}, {"type": "webhook", "url": "file:///etc"},
    {"type": "smtp", "host": "h"}, {"type": "smtp", "host": "h", "to": "a@b", "port": "25"},
    {"type": "smtp", "host": "h", "to": "a@b", "username": "u"},
], ids=lambda s: json.dumps(s))
def test_bad_config_is_refused_at_start(tmp_path: Path, subscriber: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        LocalNotifier(write_config(tmp_path, [subscriber]), tmp_path / "n.jsonl")


def test_missing_or_malformed_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        LocalNotifier(tmp_path / "absent.yaml", tmp_path / "n.jsonl")
    (tmp_path / "bad.yaml").write_text("subscribers: [\n")
    with pytest.raises(ConfigurationError):
        LocalNotifier(tmp_path / "bad.yaml", tmp_path / "n.jsonl")
    (tmp_path / "empty.yaml").write_text("")
    assert LocalNotifier(tmp_path / "empty.yaml", tmp_path / "n.jsonl").subscriptions == ()


@pytest.mark.parametrize(("name", "text"), [
    ("twice.yaml", "subscribers:\n  - type: console\n    type: jsonl\n"),
    ("twice.json", '{"subscribers": [{"type": "console", "type": "jsonl"}]}'),
])
def test_a_key_given_twice_is_refused_naming_it(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigurationError, match=f"{name}.*duplicate key 'type'"):
        LocalNotifier(tmp_path / name, tmp_path / "n.jsonl")
