"""The local stack's CLI and stand-ins, without `nacelle up` running (every subcommand must work)."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from nacelle.cli import main
from nacelle.local.adapters.paths import BUCKET
from nacelle.local.runtime.bus import Dispatcher
from nacelle.local.runtime.s3events import NotifiedKeys, RawWatcher
from nacelle.local.runtime.stack import Stack
from shared.usecases import state_keys as sk
from tests.integration.conftest import write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    write_config(home)
    return home


def run(home, *args: str) -> int:
    return main(["--data-dir", str(home), *args])


def test_put_is_idempotent_and_raw_data_is_immutable(home, tmp_path, capsys):
    src = tmp_path / "upload" / "wt-01"
    src.mkdir(parents=True)
    (src / "a.csv").write_text("one")
    assert run(home, "data", "put", str(src)) == 0
    assert run(home, "data", "put", str(src)) == 0  # identical content: a no-op
    assert "0 uploaded, 1 already present" in capsys.readouterr().out
    (src / "a.csv").write_text("two")
    assert run(home, "data", "put", str(src)) == 2
    assert "immutable" in capsys.readouterr().err
    assert (home / "objects" / BUCKET / "raw" / "wt-01" / "a.csv").read_text() == "one"


def test_data_retire_records_who_when_why(home, tmp_path, capsys):
    src = tmp_path / "upload" / "wt-01"
    src.mkdir(parents=True)
    (src / "a.csv").write_text("one")
    assert run(home, "data", "put", str(src)) == 0
    Dispatcher(Stack(home).bus, Stack(home).targets()).run_until_idle(timeout_s=30)  # the file is recorded
    assert run(home, "data", "retire", "raw/wt-01/a.csv", "--by", "gina", "--reason", "wrong turbine") == 0
    assert "retired raw/wt-01/a.csv (was quarantined) by gina" in capsys.readouterr().out
    assert run(home, "data", "retire", "raw/wt-01/nope.csv", "--reason", "x") == 2
    assert "never received" in capsys.readouterr().err
    assert (home / "objects" / BUCKET / "raw" / "wt-01" / "a.csv").read_text() == "one"


def test_data_dir_after_the_subcommand_and_json_listings(home, capsys):
    assert main(["models", "list", "--json", "--data-dir", str(home)]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["jobs", "list", "--json", "--data-dir", str(home)]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["events", "dlq", "--json", "--data-dir", str(home)]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_a_file_copied_into_the_raw_folder_is_picked_up_and_validated(home, small_dataset):
    stack = Stack(home)
    src = next(small_dataset.rglob("*.csv.gz"))
    target = stack.paths.raw_dir / "wt-01" / src.name
    target.parent.mkdir(parents=True)
    shutil.copy(src, target)
    watcher = RawWatcher(stack.paths.bucket_dir, BUCKET, stack.bus.put, NotifiedKeys(home / "s3events.db"))
    assert watcher.scan() == []  # first sight: wait until the copy is stable
    assert watcher.scan() == [f"raw/wt-01/{src.name}"]
    assert watcher.scan() == []  # announced once
    Dispatcher(stack.bus, stack.targets()).run_until_idle(timeout_s=30)
    record = stack.state.get(sk.group_pk(stack.settings.group), sk.FILE + f"raw/wt-01/{src.name}")
    assert record is not None and record["status"] == "accepted"


def drain(stack: Stack, dispatcher: Dispatcher) -> None:
    """Deliver until nothing is pending (retries are due after their backoff)."""
    for _ in range(100):
        dispatcher.run_until_idle(timeout_s=10)
        if not stack.bus.deliveries("pending"):
            return
        time.sleep(0.02)
    raise AssertionError("deliveries still pending")


def test_failing_deliveries_become_dead_letters_that_can_be_redriven(home, capsys):
    stack = Stack(home)
    calls: list[dict] = []

    def broken(event: dict) -> None:
        calls.append(event)
        if len(calls) <= 2:
            raise RuntimeError("downstream is down")

    stack.bus.put({"source": "aws.s3", "detail-type": "Object Created",
                   "detail": {"bucket": {"name": BUCKET}, "object": {"key": "raw/x/y.csv", "size": 1, "etag": "e"}}})
    dispatcher = Dispatcher(stack.bus, {"DataArrivalFunction": broken}, max_attempts=2, backoff_base_s=0.01)
    drain(stack, dispatcher)
    assert run(home, "events", "dlq") == 0
    assert "downstream is down" in capsys.readouterr().out
    assert run(home, "events", "redrive") == 0
    drain(stack, dispatcher)
    assert len(calls) == 3 and stack.bus.dlq() == []


def test_a_gate_rejected_version_needs_an_explicit_override(home, capsys):
    stack = Stack(home)
    stack.registry.register(stack.settings.group, "jobs/j/output/model.tar.gz", "Rejected", "gate",
                            {"nacelle:gate": "rejected", "nacelle:gate_reasons": "3 faults: at least 5 needed"}, "j")
    assert run(home, "models", "approve", "1", "--by", "erin") == 2
    assert "--override-gate" in capsys.readouterr().err
    assert stack.registry.get(stack.settings.group, 1).status == "Rejected"
    assert run(home, "models", "approve", "1", "--by", "erin", "--override-gate", "--reason", "labels were late") == 0
    assert "quality gate overridden" in capsys.readouterr().out
    v = stack.registry.get(stack.settings.group, 1)
    assert v.status == "Approved" and v.metadata["nacelle:gate_override"].startswith("erin at ")


def test_approval_is_recorded_with_who_and_why(home, capsys):
    stack = Stack(home)
    stack.registry.register(stack.settings.group, "jobs/j/output/model.tar.gz", "PendingManualApproval", "ok",
                            {"nacelle:job": "j"}, "j")
    assert run(home, "models", "approve", "1", "--by", "alice", "--reason", "beats the champion") == 0
    assert run(home, "models", "show", "1", "--json") == 0
    doc = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert doc["status"] == "Approved"
    assert doc["history"][-1]["actor"] == "alice" and doc["history"][-1]["reason"] == "beats the champion"
    # the registry announced the change on the bus, in the AWS shape
    events = [stack.bus.event(d.event_id) for d in stack.bus.deliveries()]
    assert not events or all(e["source"] == "aws.sagemaker" for e in events)


def test_data_status_follows_what_arrived_and_json_keeps_numbers_and_iso_times(home, small_dataset, capsys):
    write_config(home, min_new_turbine_hours=1000.0)  # the policy must not start a training here
    assert run(home, "data", "put", str(small_dataset)) == 0
    stack = Stack(home)
    drain(stack, Dispatcher(stack.bus, stack.targets()))
    capsys.readouterr()
    assert run(home, "data", "status", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["accepted_files"] == doc["new_files"] == len(list(small_dataset.rglob("*.csv.gz")))
    assert doc["new_turbine_hours"] == pytest.approx(2.0, abs=0.05) and doc["would_start"] is False
    assert doc["active_job"] is None and doc["last_arrival_at"].endswith("Z")
    assert run(home, "data", "status") == 0
    assert "2.00 of the 1000 turbine-hours" in capsys.readouterr().out


def test_a_version_is_v1_everywhere_and_its_figures_are_numbers(home, capsys):
    stack = Stack(home)
    stack.registry.register(stack.settings.group, "jobs/j/output/model.tar.gz", "PendingManualApproval", "ok",
                            {"nacelle:job": "j", "metric:event_f1": "0.9", "metric:mean_delay_s": "12.5"}, "j")
    assert run(home, "models", "approve", "v1", "--by", "alice", "--reason", "fine") == 0
    assert capsys.readouterr().out == "nacelle-turbine v1 is now Approved\n"
    assert run(home, "models", "show", "v1", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metrics"] == {"event_f1": 0.9, "mean_delay_s": 12.5} and doc["champion"] is True
    assert all(h["at"].endswith("Z") for h in doc["history"])
    assert run(home, "models", "show", "1") == 0
    out = capsys.readouterr().out
    assert "status       Approved (champion)" in out and "deployed     nowhere" in out
