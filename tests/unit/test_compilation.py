"""model_approved's use case: Approved only, one compile per version, failures reported and retriable."""

from __future__ import annotations

import pytest

from shared.errors import Conflict
from shared.ports import CompileRequest
from shared.usecases.compilation import CompileDeps, on_compile_finished, on_model_package_change, retry_compile
from tests.fakes import Clock, FakeCompile, MemoryRegistry, MemoryState, MemoryStore, RecordingNotifier

GROUP = "nacelle-turbine"


@pytest.fixture
def deps() -> CompileDeps:
    d = CompileDeps(MemoryStore(), MemoryState(), MemoryRegistry(), RecordingNotifier(), FakeCompile(), GROUP,
                    Clock())
    d.registry.ensure_group(GROUP)
    d.registry.register(GROUP, "jobs/j1/output/model.tar.gz", "PendingManualApproval", "",
                        {"nacelle:dataset_hash": "ab" * 32}, "j1")
    d.store.put(f"datasets/{GROUP}/{'ab' * 32}.json", b"[]")
    return d


def approve(deps: CompileDeps, version: int = 1):
    deps.registry.set_status(GROUP, version, "Approved", "ok", "alice")
    return on_model_package_change(GROUP, version, "Approved", deps)


def test_approval_starts_one_compile_with_the_training_data_for_equivalence(deps):
    outcome = approve(deps)
    assert outcome.action == "started"
    (request,) = deps.compiler.started
    assert request.job_name == f"nacelle-compile-{GROUP}-1-1"
    assert request.output_prefix == f"compiled/{GROUP}/1/"
    assert request.model_data_key == "jobs/j1/output/model.tar.gz"
    assert request.validation_manifest_key == f"datasets/{GROUP}/{'ab' * 32}.json"


def test_approval_delivered_three_times_gives_one_compile(deps):
    actions = [approve(deps).action for _ in range(3)]
    assert actions == ["started", "duplicate", "duplicate"]
    assert len(deps.compiler.started) == 1


@pytest.mark.parametrize("status", ["Rejected", "PendingManualApproval"])
def test_other_statuses_do_nothing(deps, status):
    assert on_model_package_change(GROUP, 1, status, deps).action == "ignored"
    assert deps.compiler.started == []


def test_a_stale_approval_event_is_ignored(deps):
    deps.registry.set_status(GROUP, 1, "Rejected", "changed my mind", "bob")
    assert on_model_package_change(GROUP, 1, "Approved", deps).action == "ignored"


class RecordingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.puts: list[str] = []

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.puts.append(key)
        super().put(key, data, content_type)


def test_an_existing_bundle_is_announced_again_for_the_rollout(deps):
    deps.store = RecordingStore()
    deps.store.put(f"compiled/{GROUP}/1/manifest.json", b"{}")
    assert approve(deps).action == "announced"
    assert deps.store.puts == [f"compiled/{GROUP}/1/manifest.json"] * 2  # same bytes, a new Object Created
    assert deps.store.get(f"compiled/{GROUP}/1/manifest.json") == b"{}" and deps.compiler.started == []


def test_approve_reject_during_the_compile_approve_again_still_rolls_out(deps):
    deps.store = RecordingStore()
    assert approve(deps).action == "started"
    deps.registry.set_status(GROUP, 1, "Rejected", "wait", "bob")  # while the compile runs
    deps.store.put(f"compiled/{GROUP}/1/manifest.json", b'{"model_version": 1}')  # the compile's output:
    # its Object Created finds v1 Rejected, and the rollout ignores it
    assert approve(deps).action == "announced"  # approved again: the bundle is announced once more
    assert deps.store.puts.count(f"compiled/{GROUP}/1/manifest.json") == 2 and len(deps.compiler.started) == 1


def test_an_approval_of_a_version_not_in_the_registry_is_ignored(deps):
    outcome = on_model_package_change(GROUP, 7, "Approved", deps)
    assert outcome.action == "ignored" and "not in the registry" in outcome.detail


def gate_rejected(deps: CompileDeps) -> None:
    deps.registry.register(GROUP, "jobs/j2/output/model.tar.gz", "Rejected", "gate",
                           {"nacelle:gate": "rejected", "nacelle:gate_reasons": "event_f1 0.41 below 0.75"}, "j2")


def test_a_gate_rejected_version_approved_without_override_is_refused_once(deps):
    gate_rejected(deps)
    deps.registry.set_status(GROUP, 2, "Approved", "console click", "carol")  # e.g. in the SageMaker console
    actions = [on_model_package_change(GROUP, 2, "Approved", deps).action for _ in range(2)]
    assert actions == ["refused", "refused"] and deps.compiler.started == []
    (note,) = deps.notifier.messages
    assert "quality gate" in note.subject and "--override-gate" in note.message and "event_f1 0.41" in note.message


def test_the_override_is_explicit_needs_a_reason_and_is_recorded(deps):
    from datetime import UTC, datetime

    from shared.usecases.approval import approve as approve_version

    gate_rejected(deps)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    with pytest.raises(Conflict, match="--override-gate"):
        approve_version(deps.registry, GROUP, 2, "dave", "looks fine", now)
    with pytest.raises(Conflict, match="needs a reason"):
        approve_version(deps.registry, GROUP, 2, "dave", " ", now, override_gate=True)
    assert deps.registry.get(GROUP, 2).status == "Rejected"
    v = approve_version(deps.registry, GROUP, 2, "dave", "faults were mislabelled", now, override_gate=True)
    assert v.status == "Approved"
    assert v.metadata["nacelle:gate_override"] == "dave at 2026-03-01T00:00:00+00:00: faults were mislabelled"
    assert on_model_package_change(GROUP, 2, "Approved", deps).action == "started"


def test_a_failed_compile_is_reported_once_and_can_be_retried(deps):
    approve(deps)
    job = deps.compiler.started[0].job_name
    assert on_compile_finished(job, "Failed", "equivalence check failed", deps).action == "failed"
    assert on_compile_finished(job, "Failed", "equivalence check failed", deps).action == "duplicate"
    (message,) = deps.notifier.messages
    assert "equivalence check failed" in message.message and f"nacelle jobs retry {job}" in message.message
    assert deps.registry.get(GROUP, 1).status == "Approved"  # approved, not compiled
    retried = retry_compile(1, deps)
    assert retried.detail == f"nacelle-compile-{GROUP}-1-2"
    with pytest.raises(Conflict):
        retry_compile(1, deps)  # the retry is running


class FakeNeo:
    def __init__(self) -> None:
        self.started: list = []

    def start(self, request) -> None:
        self.started.append(request)


def test_neo_runs_after_the_onnx_bundle_on_the_packed_onnx_model(deps):
    import io
    import tarfile

    deps.neo, deps.neo_target = FakeNeo(), "ml_c5"
    deps.registry.update_metadata(GROUP, 1, {"nacelle:input_shape": "1 6 100"})  # as registration writes it
    approve(deps)
    assert deps.neo.started == []  # not before the ONNX model exists
    deps.store.put(f"compiled/{GROUP}/1/model.onnx", b"onnx-bytes")
    on_compile_finished(deps.compiler.started[0].job_name, "Completed", None, deps)
    (request,) = deps.neo.started
    assert request.input_shape == (1, 6, 100) and request.target_device == "ml_c5"
    with tarfile.open(fileobj=io.BytesIO(deps.store.get(request.model_data_key))) as tar:
        assert tar.getnames() == ["model.onnx"]


def test_a_neo_artifact_and_its_digest_are_recorded_beside_the_manifest_once(deps):
    import hashlib
    import json

    from shared.usecases.compilation import on_neo_output

    deps.neo_target = "ml_c5"
    prefix = f"compiled/{GROUP}/1/"
    manifest = json.dumps({"edge": {"artifacts": {"model.onnx": {}}}}).encode()
    deps.store.put(prefix + "manifest.json", manifest)
    key = prefix + "neo/output/model-ml_c5.tar.gz"
    deps.store.put(key, b"neo-artifact")
    assert on_neo_output(key, deps).action == "recorded"
    assert on_neo_output(key, deps).action == "duplicate"
    neo = json.loads(deps.store.get(prefix + "neo.json"))
    assert neo == {"key": key, "sha256": hashlib.sha256(b"neo-artifact").hexdigest(), "size": 12, "target": "ml_c5"}
    assert deps.store.get(prefix + "manifest.json") == manifest  # untouched: no second rollout
    assert on_neo_output(prefix + "model.onnx", deps).action == "ignored"


class ThrottledOnce(FakeCompile):
    """CreateProcessingJob refuses the first call (throttling), then works."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals = 1

    def start(self, request: CompileRequest) -> None:
        if self.refusals:
            self.refusals -= 1
            raise RuntimeError("ThrottlingException: Rate exceeded")
        super().start(request)


def test_an_approval_whose_compile_could_not_start_is_completed_by_its_redelivery(deps):
    deps.compiler = ThrottledOnce()
    with pytest.raises(RuntimeError):
        approve(deps)  # claimed, but the job was never created
    assert approve(deps).action == "started"  # the redelivery creates it
    assert [r.job_name for r in deps.compiler.started] == [f"nacelle-compile-{GROUP}-1-1"]
    assert approve(deps).action == "duplicate" and len(deps.compiler.started) == 1


def test_the_operator_retry_creates_a_claimed_compile_whose_job_never_started(deps):
    deps.compiler = ThrottledOnce()
    with pytest.raises(RuntimeError):
        approve(deps)
    assert retry_compile(1, deps).action == "started"  # not "is InProgress, not Failed"
    assert len(deps.compiler.started) == 1
    with pytest.raises(Conflict):
        retry_compile(1, deps)  # now it runs


def test_a_compile_failure_notice_that_failed_is_sent_by_the_redelivery_once(deps):
    approve(deps)
    job = deps.compiler.started[0].job_name
    deps.notifier.refusals = 1
    with pytest.raises(ConnectionError):
        on_compile_finished(job, "Failed", "boom", deps)
    assert on_compile_finished(job, "Failed", "boom", deps).action == "resumed"
    assert on_compile_finished(job, "Failed", "boom", deps).action == "duplicate"
    (notice,) = deps.notifier.messages
    assert job in notice.message
    retry_compile(1, deps)  # the next attempt's failure is reported even if its first publish fails too
    deps.notifier.refusals = 1
    second = f"nacelle-compile-{GROUP}-1-2"
    with pytest.raises(ConnectionError):
        on_compile_finished(second, "Failed", "boom again", deps)
    on_compile_finished(second, "Failed", "boom again", deps)
    assert [second in m.message for m in deps.notifier.messages] == [False, True]
