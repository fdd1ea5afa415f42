"""Fixtures of the console's tests: a local stack's stores seeded as a running fleet fills them (no stack runs), and
a caller that sends API Gateway proxy events to the console app."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chalice.local import RouteMatcher

from benchmarks.console_seed import Seeded, seed
from nacelle.local.runtime.console_server import ConsoleServer, proxy_event
from services.console.app import app, handle
from shared.records import DeploymentRecord
from shared.usecases import state_keys as sk
from shared.usecases.operator import OperatorDeps
from shared.usecases.rollout_state import DEPLOYMENT

OPERATOR = "arn:aws:iam::123456789012:user/erin"
SAME_ORIGIN = {"x-nacelle-console": "1", "origin": "http://console.test", "host": "console.test",
               "sec-fetch-site": "same-origin", "content-type": "application/json"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class Caller:
    """The console app answering proxy events built from (method, path, body), as API Gateway would send them."""

    def __init__(self, deps: OperatorDeps) -> None:
        self.deps = deps
        self.matcher = RouteMatcher(list(app.routes))

    def __call__(self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None,
                 identity: Mapping[str, str] | None = None) -> Reply:
        raw = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        sent = dict(SAME_ORIGIN if method == "POST" and headers is None else headers or {"host": "console.test"})
        who = {"userArn": OPERATOR, "sourceIp": "198.51.100.7"} if identity is None else dict(identity)
        result = handle(proxy_event(self.matcher, method, path, sent, raw, who), self.deps)
        return Reply(int(result["statusCode"]), dict(result.get("headers") or {}), str(result.get("body") or ""))

    def get(self, path: str) -> Any:
        reply = self("GET", path)
        assert reply.status == 200, reply.text
        return reply.json()


def active_deployment(seeded: Seeded, version: int, stage: str) -> str:
    """A rollout's deployment of `version` to the `stage` group that no device has finished yet."""
    stack, gg = seeded.stack, seeded.stack.greengrass
    group = stack.settings.canary_group if stage == "canary" else stack.settings.fleet_group
    deployment = gg.create_deployment(gg.thing_group_arn(group), f"nacelle-v{version}-{stage}", {}, {}, {},
                                      f"v{version}-{stage}")
    stack.state.put(sk.group_pk(stack.settings.group), DEPLOYMENT + deployment,
                    DeploymentRecord(deployment, version, stage).to_item())
    return deployment


@pytest.fixture
def seeded(tmp_path: Path) -> Seeded:
    return seed(tmp_path / "home")


@pytest.fixture
def call(seeded: Seeded) -> Caller:
    return Caller(seeded.stack.operator_deps())


@pytest.fixture
def server(seeded: Seeded) -> Iterator[ConsoleServer]:
    console = ConsoleServer(seeded.stack.paths.home, seeded.stack.operator_deps(), "erin", 0).start()
    try:
        yield console
    finally:
        console.stop()
