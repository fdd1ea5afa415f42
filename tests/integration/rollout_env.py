"""A running local stack holding the session's trained model, registered and approved the way training_completed and
an operator would, with the reads the rollout tests share (rollout record, device health, nucleus pids)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nacelle.local.runtime.stack import Stack
from nacelle.train_runner import JobResult
from shared.ml.bundle import MANIFEST_FILE, input_shape, read_tar_documents
from shared.usecases.state_keys import group_pk
from tests.integration.conftest import running_stack

GROUP = "nacelle-turbine"


@dataclass
class RolloutEnv:
    home: Path
    stack: Stack
    model_key: str
    metadata: dict[str, str]  # as registration writes it
    name: str  # what the test is, in the registry's history

    def register(self, token: str) -> int:
        version = self.stack.registry.register(GROUP, self.model_key, "PendingManualApproval", self.name,
                                               {**self.metadata, "nacelle:job": token}, idempotency_token=token)
        return version.version

    def approve(self, version: int) -> None:
        self.stack.registry.set_status(GROUP, version, "Approved", self.name, "tester")

    def rollout(self, version: int) -> dict[str, Any]:
        return self.stack.state.get(group_pk(GROUP), f"rollout#{version}") or {}

    def health(self, thing: str) -> dict[str, Any]:
        return self.stack.state.get("devices", thing) or {}

    def serving(self, thing: str, version: int, after: float = 0.0) -> bool:
        """A health row (received after `after`, epoch s) shows `version` scored at a non-zero rate."""
        h = self.health(thing)
        return (str(h.get("model_version")) in (str(version), f"{version}.0.0")
                and float(h.get("inference_rate_hz") or 0.0) > 0 and float(h.get("last_health_at") or 0) > after)

    def nucleus_pid(self, thing: str) -> int:
        return int(json.loads((self.home / "fleet.json").read_text())[f"{thing}/nucleus"]["pid"])

    def pause_nucleus(self, thing: str) -> int:
        """SIGSTOP the device's nucleus at a moment it holds no write lock on the local Greengrass database (a
        nucleus frozen inside a transaction would lock every other writer out until it resumes); its pid."""
        pid = self.nucleus_pid(thing)
        for _ in range(200):
            os.kill(pid, signal.SIGSTOP)
            try:
                with closing(sqlite3.connect(self.stack.greengrass.db_path, timeout=0)) as db:
                    db.execute("BEGIN IMMEDIATE")
                    db.rollback()
                return pid
            except sqlite3.OperationalError:  # locked, perhaps by the frozen nucleus: let it finish, then again
                os.kill(pid, signal.SIGCONT)
                time.sleep(0.05)
        raise AssertionError(f"{thing}'s nucleus could not be paused outside a Greengrass transaction")


E = TypeVar("E", bound=RolloutEnv)


@contextmanager
def rollout_env(kind: type[E], home: Path, trained_model: JobResult, name: str, soak_s: float,
                **stack: Any) -> Iterator[E]:
    """The stack in `home` (`stack`: running_stack's devices and roles) with the model stored once."""
    assert trained_model.model_archive is not None
    home.mkdir(parents=True)
    (home / "config.yaml").write_text(yaml.safe_dump({"canary_soak_s": soak_s}))
    archive = trained_model.model_archive.read_bytes()
    manifest = read_tar_documents(archive, (MANIFEST_FILE,))[MANIFEST_FILE]
    metadata = {"nacelle:dataset_hash": str(manifest.get("lineage", {}).get("dataset_hash") or ""),
                "nacelle:gate": "passed", "nacelle:input_shape": " ".join(map(str, input_shape(manifest)))}
    with running_stack(home, **stack) as running:
        model_key = f"jobs/{name.replace(' ', '-')}/output/model.tar.gz"
        running.store.put_if_absent(model_key, archive)
        yield kind(home, running, model_key, metadata, name)
