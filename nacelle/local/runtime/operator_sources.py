"""What the local stack tells the operator console beyond the ports: the job table with each job's progress and log,
the simulated device registry (groups, installed components, last contact) and the notifier's log of what it sent.
`operator_deps` is the console's OperatorDeps on a local stack (a nacelle.local.runtime.stack.Stack, not imported:
the stack imports this module)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nacelle.job_progress import LogFollower, Progress, job_log
from nacelle.local.adapters.jobs import JobRecord, JobTable
from shared.jsonview import as_datetime
from shared.usecases.operator import DeviceInventory, OperatorDeps

MAX_LOG_BYTES = 256_000  # of a log's end read for its tail


def _tail(path: Path, lines: int) -> list[str]:
    if lines <= 0 or not path.is_file():
        return []
    with path.open("rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - MAX_LOG_BYTES))
        text = fh.read().decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


def progress_note(job: JobRecord) -> str | None:
    """The last progress note in the job's log (epoch k/n, candidates, the choice)."""
    progress, last = Progress(), None
    for line in LogFollower(job_log(job)).lines(final=True):
        last = progress.note(line) or last
    return last


def _version(job: JobRecord) -> int | None:
    value = job.request.get("version")
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else None


class LocalJobs:
    """The local job table as the console's JobCatalog."""

    def __init__(self, table: JobTable) -> None:
        self.table = table

    @staticmethod
    def _doc(job: JobRecord) -> dict[str, Any]:
        return {"name": job.name, "kind": job.kind, "status": job.status, "created_at": job.created_at,
                "ended_at": job.ended_at, "failure_reason": job.failure_reason, "model_version": _version(job),
                "model_key": job.model_key}

    def jobs(self) -> list[dict[str, Any]]:
        return sorted((self._doc(j) for j in self.table.list()), key=lambda d: d["created_at"] or "", reverse=True)

    def job(self, name: str, log_lines: int) -> dict[str, Any]:
        job = self.table.get(name)
        request = {k: v for k, v in job.request.items() if isinstance(v, str | int | float | bool | dict)}
        return {**self._doc(job), "progress": progress_note(job), "log_tail": _tail(job_log(job), log_lines),
                "request": request}


def inventory(stack: Any) -> Mapping[str, DeviceInventory]:
    out = {}
    for d in stack.greengrass.devices():
        seen = as_datetime(d.last_seen)
        out[d.thing] = DeviceInventory(tuple(d.groups), dict(d.components), seen.timestamp() if seen else None)
    return out


def notification_log(stack: Any) -> Sequence[Mapping[str, Any]]:
    return list(stack.notifier.tail(follow=False))


def operator_deps(stack: Any) -> OperatorDeps:
    return OperatorDeps(alerts=stack.alert_deps(), rollout=stack.rollout_deps(), arrival=stack.arrival_deps(),
                        offline_after_s=float(stack.settings.offline_after_s), compile=stack.compile_deps(),
                        history=stack.registry.history, jobs=LocalJobs(stack.jobs),
                        inventory=lambda: inventory(stack), notification_log=lambda: notification_log(stack))
