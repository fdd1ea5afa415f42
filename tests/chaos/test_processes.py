"""The local stack's broker under kill -9: one broker per data directory, a dead one is back within
seconds on the same port with its persistence store, and the operators are told."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from nacelle.local.edge.broker import Broker
from nacelle.local.edge.pki import LocalPki
from nacelle.local.runtime.stack import Stack
from nacelle.local.runtime.up import keep_broker
from shared.events import TRAINING_STATE_CHANGE
from tests.integration.conftest import write_config

pytestmark = pytest.mark.integration


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_a_killed_broker_is_restarted_on_its_port_and_reported(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home)
    stack = Stack(home)
    broker = Broker(home, LocalPki(home / "pki")).start()
    try:
        port, first = broker.port, broker._proc
        assert first is not None
        keep_broker(broker, stack)  # alive: nothing to do
        assert broker._proc is first and list(stack.notifier.tail(follow=False)) == []
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        started = time.monotonic()
        keep_broker(broker, stack)
        assert time.monotonic() - started <= 5.0 and broker.running and broker.port == port and accepts(port)
        (note,) = list(stack.notifier.tail(follow=False))
        assert "broker restarted" in note["subject"] and "status -9" in note["message"]
        assert (home / "broker" / "pid").read_text().strip() == str(broker._proc.pid)
    finally:
        broker.stop()


def test_one_broker_per_data_directory(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pki = LocalPki(home / "pki")
    first = Broker(home, pki).start()
    orphan = first._proc
    first._proc = None  # its stack was killed
    second = Broker(home, pki).start()
    try:
        assert orphan is not None and orphan.wait(timeout=10) == 0
        alive = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _runs_conf(p, home)]
        assert len(alive) == 1
    finally:
        second.stop()


def _runs_conf(proc: Path, home: Path) -> bool:
    try:
        return str(home / "broker" / "mosquitto.conf").encode() in (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def test_a_job_started_while_no_stack_runs_is_adopted_not_killed(tmp_path: Path) -> None:
    import subprocess
    import sys

    from nacelle.local.adapters.jobs import STACK, STANDALONE, job_owner

    home = tmp_path / "home"
    write_config(home)
    stack = Stack(home)
    assert job_owner(home) == STANDALONE  # no `nacelle up` holds the data directory
    runners = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
               for _ in range(2)]
    try:
        jobs = (("nacelle-retry-2", runners[0], STANDALONE), ("nacelle-crashed-1", runners[1], STACK))
        for name, proc, owner in jobs:
            stack.jobs.create(name, "training", {"hyperparameters": {}}, home / "jobs" / name)
            stack.jobs.set_pid(name, proc.pid, owner)
        assert stack.recover_orphans(adopt_standalone=True) == ["nacelle-crashed-1"]
        assert runners[0].poll() is None and stack.jobs.get("nacelle-retry-2").owner == STACK  # adopted
        assert runners[1].wait(timeout=10) == -signal.SIGKILL  # the dead stack's job: killed, reported
        assert stack.jobs.get("nacelle-crashed-1").status == "Failed"
        assert stack.recover_orphans() == ["nacelle-retry-2"]  # stopping the stack stops what it adopted
    finally:
        for proc in runners:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_a_running_stack_owns_the_jobs_it_starts(tmp_path: Path) -> None:
    from nacelle.local.adapters.jobs import STACK, job_owner
    from nacelle.local.runtime.stack import StackLock

    home = tmp_path / "home"
    lock = StackLock(home / "up.lock")
    lock.acquire()
    try:
        assert job_owner(home) == STACK
    finally:
        lock.release()


def test_a_job_whose_runner_dies_while_the_stack_runs_is_reported_failed_and_retriable(tmp_path: Path) -> None:
    import subprocess
    import sys

    from nacelle.local.adapters.jobs import STACK

    home = tmp_path / "home"
    write_config(home)
    stack = Stack(home)
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    stack.jobs.create("nacelle-killed-1", "training", {"hyperparameters": {}}, home / "jobs" / "nacelle-killed-1")
    stack.jobs.set_pid("nacelle-killed-1", runner.pid, STACK)
    stack.jobs.create("nacelle-starting-1", "training", {"hyperparameters": {}}, home / "jobs" / "nacelle-starting-1")
    try:
        assert stack.reap_jobs() == []  # alive, and one whose runner is still starting (no pid yet)
        runner.kill()
        runner.wait()
        assert stack.reap_jobs() == ["nacelle-killed-1"] and stack.reap_jobs() == []
        job = stack.jobs.get("nacelle-killed-1")
        assert job.status == "Failed" and "runner died" in str(job.failure_reason)
        assert stack.jobs.get("nacelle-starting-1").status == "InProgress"
        events = [e for e, _ in stack.bus.events(TRAINING_STATE_CHANGE) if e["detail"]["TrainingJobName"] == job.name]
        assert [e["detail"]["TrainingJobStatus"] for e in events] == ["Failed"]  # once: training_completed hears it
    finally:
        if runner.poll() is None:
            runner.kill()
        runner.wait()


def test_the_end_event_a_killed_runner_did_not_put_is_put_by_the_stack_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home)
    stack = Stack(home)
    stack.jobs.create("nacelle-done-1", "training", {"hyperparameters": {}}, home / "jobs" / "nacelle-done-1")
    stack.jobs.finish("nacelle-done-1", "Completed", None, "jobs/nacelle-done-1/output/model.tar.gz")  # then killed
    stack.reap_jobs()
    stack.reap_jobs()
    events = [e for e, _ in stack.bus.events(TRAINING_STATE_CHANGE)
              if e["detail"]["TrainingJobName"] == "nacelle-done-1"]
    assert len(events) == 1 and events[0]["detail"]["TrainingJobStatus"] == "Completed"


def test_a_stack_that_fails_to_start_leaves_no_broker_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from nacelle.local.runtime import up

    def refused(stack: object) -> None:
        raise RuntimeError("components/nacelle.detector/1.3.0/detector.zip already exists with other content")

    home = tmp_path / "home"
    write_config(home)
    monkeypatch.setattr(up, "_publish_detector", refused)  # fails after the broker started
    with pytest.raises(RuntimeError, match="other content"):
        up.run_up(home, console_port=None)
    left = subprocess.run(["pgrep", "-f", str(home / "broker")], capture_output=True, text=True, check=False)
    assert left.stdout.strip() == ""
