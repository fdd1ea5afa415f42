"""On the local stack: drop data -> a model waits for approval, by itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nacelle.cli import main
from nacelle.local.adapters.jobs import alive
from nacelle.local.runtime.stack import Stack
from shared.ml.edge_bundle import verify
from tests.integration.conftest import LENIENT_GATE, running_stack, wait_for, write_config

pytestmark = pytest.mark.integration
GROUP = "nacelle-turbine"


def test_dropped_dataset_becomes_a_pending_model_with_metrics(tmp_path, small_dataset):
    home = tmp_path / "home"
    write_config(home, **LENIENT_GATE)
    with running_stack(home) as stack:
        assert main(["--data-dir", str(home), "data", "put", str(small_dataset)]) == 0
        versions = wait_for(lambda: stack.registry.list(GROUP), 120, "a registered model version")
        (version,) = versions
        assert version.status == "PendingManualApproval"
        assert float(version.metadata["metric:event_f1"]) >= 0.0
        assert version.metadata["nacelle:dataset_hash"]
        (job,) = stack.jobs.list()
        assert job.status == "Completed" and job.name.startswith("nacelle-")
        # the approvers' notification follows the registration (same delivery, a moment later)
        wait_for(lambda: [m for m in stack.notifier.tail(follow=False) if "approve to roll out" in m["subject"]],
                 30, "the approvers' notification")
        # putting the same data again changes nothing: identical content is a no-op
        assert main(["--data-dir", str(home), "data", "put", str(small_dataset)]) == 0

        # approving leads, with no other command, to a verified edge bundle
        assert main(["--data-dir", str(home), "models", "approve", "1", "--reason", "test"]) == 0
        prefix = f"compiled/{GROUP}/1/"
        wait_for(lambda: stack.store.exists(prefix + "manifest.json"), 120, "the compiled bundle's manifest")
        bundle = verify(stack.store.path(prefix + "manifest.json").parent)  # digests match the files
        assert bundle.edge["equivalence"]["passed"] is True
        assert bundle.model_version == 1
        # the runner records the end of the job just after uploading the manifest
        wait_for(lambda: [j.status for j in stack.jobs.list() if j.kind == "compile"] == ["Completed"], 30,
                 "the compile job to be recorded Completed")
        # approving again (a redelivered event) compiles nothing more
        assert main(["--data-dir", str(home), "models", "approve", "1"]) == 0
    assert len(Stack(home).jobs.list()) == 2


def test_a_model_that_fails_the_gate_is_rejected_with_reasons(tmp_path, small_dataset):
    home = tmp_path / "home"
    write_config(home, gate_max_false_alarms_per_day=-1.0)  # no model can have fewer than 0 false alarms
    with running_stack(home) as stack:
        assert main(["--data-dir", str(home), "data", "put", str(small_dataset)]) == 0
        (version,) = wait_for(lambda: stack.registry.list(GROUP), 120, "a registered model version")
        assert version.status == "Rejected"
        assert "is above the maximum -1.00" in version.metadata["nacelle:gate_reasons"]
        assert "Rejected by the quality gate" in version.description


def test_a_second_up_on_the_same_directory_refuses_to_start(tmp_path):
    home = tmp_path / "home"
    write_config(home)
    with running_stack(home):
        result = subprocess.run([sys.executable, "-m", "nacelle.cli", "--data-dir", str(home), "up"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "already running" in result.stderr


def _up(home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nacelle.cli", "up", "--data-dir", str(home)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)


def test_sigkill_during_training_loses_nothing_and_the_job_can_be_retried(tmp_path, small_dataset):
    home = tmp_path / "home"
    write_config(home, **LENIENT_GATE, hyperparameters={"epochs": "40", "patience": "40",
                                                         "max_train_windows": "4000"})
    first = _up(home)
    try:
        assert main(["--data-dir", str(home), "data", "put", str(small_dataset)]) == 0
        view = Stack(home)
        job = wait_for(lambda: next((j for j in view.jobs.list() if j.pid), None), 60, "a running training job")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        assert alive(job.pid), "the job runner is its own session and outlives the stack"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    second = _up(home)
    try:
        failed = wait_for(lambda: view.jobs.get(job.name).status == "Failed" and view.jobs.get(job.name), 30,
                          "the orphaned job to be reported")
        assert "retry" in (failed.failure_reason or "")
        wait_for(lambda: not alive(job.pid), 10, "the orphaned job process to die")
        # the Failed state change reached training_completed: the group is free, the dataset failed
        notes = wait_for(lambda: [m for m in view.notifier.tail(follow=False) if job.name in m["subject"]], 30,
                         "the failure notification")
        assert "failed" in notes[0]["subject"]
        write_config(home, **LENIENT_GATE)  # the retry may train fast
        assert main(["--data-dir", str(home), "jobs", "retry", job.name]) == 0
        retried = job.name[:-1] + "2"
        wait_for(lambda: view.jobs.get(retried).status == "Completed", 120, "the retried job to complete")
        wait_for(lambda: view.registry.list(GROUP), 30, "the retried job's model version")
        assert view.bus.dlq() == []
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=30)


def test_a_10_second_csv_with_its_own_spec_trains_and_is_judged_with_reasons(tmp_path):
    """An operator's own data: 3 sensors every 10 s, installed with `spec put`, dropped with `data put`,
    judged by the default gate: non-zero metrics and either a pending version or reasons a person reads."""
    from tests.unit.test_training_small import SPEC as SLOW_SPEC
    from tests.unit.test_training_small import write_plant

    home = tmp_path / "home"
    write_config(home, hyperparameters={"threads": "1", "epochs": "20"})  # the default gate
    (tmp_path / "slow-plant.yaml").write_text(SLOW_SPEC)
    write_plant(tmp_path / "drop" / "unit7" / "2026-01.csv", 2500, seed=4)
    with running_stack(home) as stack:
        assert main(["--data-dir", str(home), "spec", "put", str(tmp_path / "slow-plant.yaml")]) == 0
        assert main(["--data-dir", str(home), "data", "put", str(tmp_path / "drop" / "unit7")]) == 0
        (version,) = wait_for(lambda: stack.registry.list(GROUP), 180, "a registered model version")
        meta = version.metadata
        assert meta["nacelle:family"] in ("pca", "conv1d") and "pca f1" in meta["nacelle:candidates"]
        assert float(meta["metric:event_recall"]) > 0.0  # injected faults were scored and detected
        assert meta["nacelle:input_shape"] == "1 3 30"  # 10 samples + the 200 s baseline of the coolant
        if version.status == "Rejected":
            reasons = meta["nacelle:gate_reasons"]
            assert "fault" in reasons or "false alarm" in reasons, reasons
        else:
            assert version.status == "PendingManualApproval"
        (job,) = stack.jobs.list()
        assert job.status == "Completed"
