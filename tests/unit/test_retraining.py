"""data_arrival's use case: validation, quarantine, the debounced retraining policy, one job per dataset."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime

import pytest

from nacelle.simulator.generate import csv_bytes
from nacelle.simulator.physics import TurbineModel
from shared.errors import Conflict
from shared.ports import ApprovalStatus, ModelVersion
from shared.usecases import state_keys as sk
from shared.usecases.retraining import (
    CLAIM_GRACE_S,
    ArrivalDeps,
    RetrainPolicy,
    on_object_created,
    on_retrain_check,
    retry_training,
)
from tests.fakes import (
    Clock,
    FakeTraining,
    MemoryRegistry,
    MemoryState,
    MemoryStore,
    RecordingEvents,
    RecordingNotifier,
)

GROUP = "nacelle-turbine"


@pytest.fixture(scope="module")
def ten_minutes() -> list[bytes]:
    """Three consecutive 10-minute gzip files of one turbine."""
    model = TurbineModel("wt-01", 5, datetime(2026, 3, 1, tzinfo=UTC))
    return [gzip.compress(csv_bytes(model.step(600)), mtime=0) for _ in range(3)]


@pytest.fixture
def deps() -> ArrivalDeps:
    clock = Clock()
    return ArrivalDeps(store=MemoryStore(), state=MemoryState(), notifier=RecordingNotifier(),
                       events=RecordingEvents(clock), training=FakeTraining(), registry=MemoryRegistry(),
                       policy=RetrainPolicy(GROUP, min_new_turbine_hours=0.4, quiet_period_s=15.0,
                                            hyperparameters={"epochs": "3"}),
                       clock=clock)


def drop(deps: ArrivalDeps, files: list[bytes]) -> list[str]:
    keys = []
    for i, data in enumerate(files):
        key = f"raw/wt-01/wt-01_part{i}.csv.gz"
        deps.store.put(key, data)
        keys.append(key)
        assert on_object_created(key, deps).action == "accepted"
    return keys


def test_accepted_file_is_recorded_and_a_check_is_scheduled_after_the_quiet_period(deps, ten_minutes):
    drop(deps, ten_minutes[:1])
    record = deps.state.get(sk.group_pk(GROUP), sk.FILE + "raw/wt-01/wt-01_part0.csv.gz")
    assert record["status"] == "accepted" and record["duration_s"] == pytest.approx(600, abs=1)
    (published,) = deps.events.published
    assert published.event.detail_type == "Nacelle Retrain Check"
    assert published.deliver_at is not None and (published.deliver_at - deps.clock()).total_seconds() == 15.0


@pytest.mark.parametrize("content, code", [
    (b"", "empty_file"),
    (b"\x1f\x8b\x08\x00garbage", "truncated_gzip"),
    (b"\x1f\x8b\x08\x00" + bytes(range(200)) * 3, "corrupt_gzip"),
    (b"qx,qy\n1,2\n", "missing_column"),
])
def test_bad_files_are_quarantined_with_a_report_and_start_nothing(deps, content, code):
    key = "raw/wt-01/bad.csv"
    deps.store.put(key, content)
    outcome = on_object_created(key, deps)
    assert outcome.action == "quarantined"
    assert deps.store.get(key) == content  # the original is untouched
    assert deps.store.get(f"quarantine/{key}") == content
    report = __import__("json").loads(deps.store.get(f"quarantine/{key}.report.json"))
    assert code in {e["code"] for e in report["errors"]}
    (message,) = deps.notifier.messages
    assert message.topic == "data_quality" and key in message.subject
    assert deps.events.published == []


def test_wrongly_sampled_file_is_quarantined(deps, ten_minutes):
    text = gzip.decompress(ten_minutes[0]).decode().splitlines()
    key = "raw/wt-01/every-tenth-row.csv"
    deps.store.put(key, "\n".join(text[:1] + text[1::10]).encode())  # 2 Hz instead of 20 Hz
    assert on_object_created(key, deps).action == "quarantined"
    assert "sampling_rate" in deps.store.get(f"quarantine/{key}.report.json").decode()


def test_same_event_three_times_gives_one_record_and_one_check(deps, ten_minutes):
    key = "raw/wt-01/x.csv.gz"
    deps.store.put(key, ten_minutes[0])
    actions = [on_object_created(key, deps).action for _ in range(3)]
    assert actions == ["accepted", "duplicate", "duplicate"]
    assert len(deps.events.published) == 1


def test_checks_are_debounced_and_need_enough_new_data(deps, ten_minutes):
    drop(deps, ten_minutes[:2])  # 20 minutes: below 0.4 turbine-hours
    deps.clock.advance(5)
    assert on_retrain_check(deps, deps.clock()).action == "skipped"  # quiet period not over
    deps.clock.advance(15)
    outcome = on_retrain_check(deps, deps.clock())
    assert outcome.action == "skipped" and "new turbine-hours" in outcome.detail
    assert deps.training.started == []


def test_no_job_starts_on_fewer_rows_than_training_needs(deps, ten_minutes):
    deps.policy = RetrainPolicy(GROUP, min_new_turbine_hours=0.4, quiet_period_s=15.0, min_rows=100_000)
    drop(deps, ten_minutes)  # 30 minutes at 20 Hz: about 36,000 rows
    deps.clock.advance(20)
    outcome = on_retrain_check(deps, deps.clock())
    rows = outcome.data["rows"]
    assert 30_000 < rows < 36_001
    assert outcome.action == "skipped" and outcome.detail == f"{rows} accepted rows < 100000 the training needs"
    assert deps.training.started == []


def test_policy_fires_once_per_dataset_and_names_the_job_from_its_hash(deps, ten_minutes):
    keys = drop(deps, ten_minutes)
    deps.clock.advance(20)
    first = on_retrain_check(deps, deps.clock())
    assert first.action == "started"
    digest = first.data["dataset_hash"]
    assert first.detail == f"nacelle-{digest[:16]}-1"
    # redelivered checks start nothing more
    assert [on_retrain_check(deps, deps.clock()).action for _ in range(2)] == ["skipped", "skipped"]
    (request,) = deps.training.started
    manifest = __import__("json").loads(deps.store.get(request.dataset_manifest_key))
    assert manifest[0] == {"prefix": "s3://data/"} and manifest[1:] == sorted(keys)
    assert request.dataset_manifest_key == f"datasets/{GROUP}/{digest}.json"
    assert request.hyperparameters == {"epochs": "3", "dataset_hash": digest}
    assert request.champion_model_key is None


def test_failed_job_is_not_retried_automatically_but_can_be_retried(deps, ten_minutes):
    drop(deps, ten_minutes)
    deps.clock.advance(20)
    job = on_retrain_check(deps, deps.clock()).detail
    pk = sk.group_pk(GROUP)
    deps.state.update_if(pk, sk.JOB + job, {"status": "Failed", "finished": True}, {})
    digest = deps.state.get(pk, sk.JOB + job)["dataset_hash"]
    deps.state.update_if(pk, sk.DATASET + digest, {"status": "failed"}, {})
    deps.state.update_if(pk, sk.ACTIVE_JOB, {"job_name": ""}, {"job_name": job})
    assert "retry" in on_retrain_check(deps, deps.clock()).detail
    retried = retry_training(deps, job)
    assert retried.action == "started" and retried.detail == job[:-1] + "2"
    with pytest.raises(Conflict):
        retry_training(deps, job)  # attempt 1 is no longer the latest attempt


def test_champion_is_the_newest_approved_version_not_marked_failed(deps, ten_minutes):
    registry = deps.registry
    registry.ensure_group(GROUP)
    for i in (1, 2, 3):
        registry.register(GROUP, f"jobs/j{i}/output/model.tar.gz", "Approved", "", {}, f"t{i}")
    registry.update_metadata(GROUP, 3, {"nacelle:failed": "true"})
    drop(deps, ten_minutes)
    deps.clock.advance(20)
    on_retrain_check(deps, deps.clock())
    assert deps.training.started[0].champion_model_key == "jobs/j2/output/model.tar.gz"


# -- what would jam every later training: bad labels, overlapping files ---------------------------------
def test_a_malformed_labels_file_is_quarantined_and_never_joins_a_dataset(deps, ten_minutes):
    good = b'{"episodes": [{"turbine_id": "wt-01", "start": "2026-03-01T00:01:00Z", "end": "2026-03-01T00:02:00Z"}]}'
    bad = b'{"episodes": [{"turbine_id": "wt-01", "start": "2026-03-01T00:05:00Z", "end": "yesterday"}]}'
    deps.store.put("labels/good/labels.json", good)
    deps.store.put("labels/bad/labels.json", bad)
    assert on_object_created("labels/good/labels.json", deps).action == "accepted"
    outcome = on_object_created("labels/bad/labels.json", deps)
    assert outcome.action == "quarantined" and "episodes[0]: start/end" in outcome.detail
    assert on_object_created("labels/bad/labels.json", deps).action == "duplicate"
    report = __import__("json").loads(deps.store.get("quarantine/labels/bad/labels.json.report.json"))
    assert "labels/bad/labels.json: episodes[0]" in report["errors"][0]
    assert deps.store.get("labels/bad/labels.json") == bad  # untouched
    (note,) = [m for m in deps.notifier.messages if m.topic == "data_quality"]
    assert "labels/bad/labels.json" in note.subject
    drop(deps, ten_minutes)
    deps.clock.advance(20)
    assert on_retrain_check(deps, deps.clock()).action == "started"
    (request,) = deps.training.started
    manifest = __import__("json").loads(deps.store.get(request.dataset_manifest_key))
    assert "labels/good/labels.json" in manifest and "labels/bad/labels.json" not in manifest


def test_labels_put_before_validation_existed_are_checked_when_the_dataset_is_built(deps, ten_minutes):
    deps.store.put("labels/old/labels.json", b"not json")  # never went through on_object_created
    drop(deps, ten_minutes)
    deps.clock.advance(20)
    assert on_retrain_check(deps, deps.clock()).action == "started"
    manifest = __import__("json").loads(deps.store.get(deps.training.started[0].dataset_manifest_key))
    assert not any(k.startswith("labels/") for k in manifest[1:])
    assert deps.state.get(f"group#{GROUP}", "file#labels/old/labels.json")["status"] == "quarantined"


def test_labels_contradicting_earlier_labels_are_left_out_with_a_report(deps, ten_minutes):
    import json

    fault = {"turbine_id": "wt-01", "start": "2026-03-01T00:01:00Z", "end": "2026-03-01T00:02:00Z",
             "fault": "overspeed"}
    called_normal = {"turbine_id": "wt-01", "start": "2026-03-01T00:01:30Z", "end": "2026-03-01T00:03:00Z"}
    elsewhere = {**called_normal, "turbine_id": "wt-02"}
    files = {"labels/gen/labels.json": {"episodes": [fault]},
             "labels/alerts/a/labels.json": {"episodes": [], "false_alarms": [called_normal]},  # contradicts gen
             "labels/alerts/b/labels.json": {"episodes": [], "false_alarms": [elsewhere]}}  # another turbine
    for key, doc in files.items():
        deps.store.put(key, json.dumps(doc).encode())
        assert on_object_created(key, deps).action == "accepted"  # fine alone
        deps.clock.advance(1)
    drop(deps, ten_minutes)
    deps.clock.advance(20)
    assert on_retrain_check(deps, deps.clock()).action == "started"
    manifest = json.loads(deps.store.get(deps.training.started[0].dataset_manifest_key))
    assert [k for k in manifest[1:] if k.startswith("labels/")] == ["labels/alerts/b/labels.json",
                                                                     "labels/gen/labels.json"]
    record = deps.state.get(f"group#{GROUP}", "file#labels/alerts/a/labels.json")
    assert record["status"] == "excluded" and record["excluded_reason"] == (
        "it labels turbine wt-01 from 2026-03-01T00:01:30+00:00 to 2026-03-01T00:03:00+00:00 against "
        "labels/gen/labels.json (accepted earlier), which calls that time a fault")
    assert [m.subject for m in deps.notifier.messages if m.topic == "data_quality"] == [
        "Left out of training: labels/alerts/a/labels.json"]


def test_malformed_false_alarms_quarantine_a_labels_file(deps):
    deps.store.put("labels/x/labels.json", b'{"episodes": [], "false_alarms": [{"turbine_id": "wt-01"}]}')
    outcome = on_object_created("labels/x/labels.json", deps)
    assert outcome.action == "quarantined" and "false_alarms[0]: start is missing" in outcome.detail


def test_an_overlapping_file_is_left_out_with_a_report_and_training_goes_on(deps, ten_minutes):
    keys = drop(deps, ten_minutes)
    deps.clock.advance(1)
    again = "raw/wt-01/copy-of-part0.csv.gz"  # the same turbine and minutes under another name
    deps.store.put(again, ten_minutes[0])
    assert on_object_created(again, deps).action == "accepted"  # fine alone
    deps.clock.advance(20)
    outcome = on_retrain_check(deps, deps.clock())
    assert outcome.action == "started"
    manifest = __import__("json").loads(deps.store.get(deps.training.started[0].dataset_manifest_key))
    assert manifest[1:] == sorted(keys) and again not in manifest
    record = deps.state.get(f"group#{GROUP}", f"file#{again}")
    assert record["status"] == "excluded" and "raw/wt-01/wt-01_part0.csv.gz" in record["excluded_reason"]
    notes = [m for m in deps.notifier.messages if m.topic == "data_quality"]
    assert [m.subject for m in notes] == [f"Left out of training: {again}"]
    assert deps.store.get(again) == ten_minutes[0]  # untouched


def test_a_retired_file_leaves_future_datasets_and_stays_untouched(deps, ten_minutes):
    from shared.usecases.retraining import retire_file

    deps.policy = RetrainPolicy(GROUP, min_new_turbine_hours=0.3, quiet_period_s=15.0)
    keys = drop(deps, ten_minutes)
    with pytest.raises(Conflict, match="--reason"):
        retire_file(deps, keys[0], "frank", " ")
    record = retire_file(deps, keys[0], "frank", "sensor recalibrated that day")
    assert (record["status"], record["retired_by"], record["status_before_retirement"]) == ("retired", "frank",
                                                                                             "accepted")
    assert retire_file(deps, keys[0], "frank", "again")["retired_reason"] == "sensor recalibrated that day"
    deps.clock.advance(20)
    assert on_retrain_check(deps, deps.clock()).action == "started"
    manifest = __import__("json").loads(deps.store.get(deps.training.started[0].dataset_manifest_key))
    assert manifest[1:] == sorted(keys[1:]) and deps.store.get(keys[0]) == ten_minutes[0]


def test_a_new_version_of_a_key_is_validated_as_new_data(deps, ten_minutes):
    key = "raw/wt-01/day.csv.gz"
    deps.store.put(key, b"not,a,turbine,file\n")
    assert on_object_created(key, deps).action == "quarantined"
    assert on_object_created(key, deps).action == "duplicate"  # the same version, redelivered
    deps.store.put(key, ten_minutes[0])  # a corrected upload under the same name (a new S3 version)
    outcome = on_object_created(key, deps)
    assert outcome.action == "accepted"
    record = deps.state.get(f"group#{GROUP}", f"file#{key}")
    assert record["status"] == "accepted" and record["replaces_sha256"] is not None
    assert record.get("quarantine_key") is None and record.get("errors") is None  # nothing of the old version
    assert on_object_created(key, deps).action == "duplicate"


def test_a_file_larger_than_the_function_can_validate_is_quarantined_with_the_reason(deps, ten_minutes):
    text_bytes = len(gzip.decompress(ten_minutes[0]))
    deps.policy = RetrainPolicy(GROUP, min_new_turbine_hours=0.4, quiet_period_s=15.0, max_file_bytes=text_bytes - 1)
    key = "raw/wt-01/month.csv.gz"
    deps.store.put(key, ten_minutes[0])
    outcome = on_object_created(key, deps)
    assert outcome.action == "quarantined" and "split it, e.g. one file per turbine and day" in outcome.detail
    report = json.loads(deps.store.get(f"quarantine/{key}.report.json"))
    assert [e["code"] for e in report["errors"]] == ["file_too_large"]
    assert deps.store.get(key) == ten_minutes[0]  # the original stays as it was
    assert deps.events.published == [] and deps.training.started == []
    deps.policy = RetrainPolicy(GROUP, min_new_turbine_hours=0.4, quiet_period_s=15.0, max_file_bytes=text_bytes)
    deps.store.put(key, ten_minutes[0] + gzip.compress(b"", mtime=0))  # a new version, the same text: fits
    assert on_object_created(key, deps).action == "accepted"


def test_a_file_too_large_to_read_is_quarantined_unread_and_a_smaller_version_is_read_again(deps, ten_minutes):
    plain = gzip.decompress(ten_minutes[0])
    deps.policy = RetrainPolicy(GROUP, min_new_turbine_hours=0.4, quiet_period_s=15.0, max_file_bytes=len(plain) - 1)
    key = "raw/wt-01/year.csv"
    deps.store.put(key, plain)
    read: list[str] = []
    get = deps.store.get

    def reading(k: str) -> bytes:
        read.append(k)
        return get(k)

    deps.store.get = reading
    outcome = on_object_created(key, deps)
    assert outcome.action == "quarantined" and key not in read  # refused on its size alone
    report = json.loads(deps.store.get(f"quarantine/{key}.report.json"))
    assert [e["code"] for e in report["errors"]] == ["file_too_large"] and "split it" in report["errors"][0]["message"]
    assert not deps.store.exists(f"quarantine/{key}")  # no copy: it was not read
    assert [m.subject for m in deps.notifier.messages] == [f"Quarantined {key}: 1 problem(s)"]
    assert on_object_created(key, deps).action == "duplicate"  # redelivered: the same verdict, no second notice
    assert len(deps.notifier.messages) == 1 and deps.events.published == []
    deps.store.put(key, plain[: plain.index(b"\n", len(plain) // 2) + 1])  # a new, smaller version: read again
    assert on_object_created(key, deps).action == "accepted"
    record = deps.state.get(sk.group_pk(GROUP), sk.FILE + key)
    assert record["status"] == "accepted" and record.get("unread_size") is None and key in read


class ThrottledOnceRegistry(MemoryRegistry):
    """ListModelPackages (the champion lookup) refuses the first call (throttling), then works."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals = 1

    def list(self, group: str, status: ApprovalStatus | None = None) -> list[ModelVersion]:
        if self.refusals:
            self.refusals -= 1
            raise RuntimeError("ThrottlingException: Rate exceeded")
        return super().list(group, status)


def test_a_failure_after_the_job_claim_gives_it_back_and_the_redelivery_starts_the_job(deps, ten_minutes):
    deps.registry = ThrottledOnceRegistry()
    drop(deps, ten_minutes)
    deps.clock.advance(20)
    with pytest.raises(RuntimeError):
        on_retrain_check(deps, deps.clock())  # claimed, then the champion lookup failed before the job existed
    pk = sk.group_pk(GROUP)
    assert deps.state.get(pk, sk.ACTIVE_JOB)["job_name"] == ""  # the group is free, not held by a phantom job
    started = on_retrain_check(deps, deps.clock())  # the same check delivered again
    assert started.action == "started" and [r.job_name for r in deps.training.started] == [started.detail]
    assert on_retrain_check(deps, deps.clock()).action == "skipped"


def test_a_claim_whose_job_was_never_created_is_given_back_by_a_later_check(deps, ten_minutes):
    drop(deps, ten_minutes)
    deps.clock.advance(20)
    pk = sk.group_pk(GROUP)
    # the function that claimed the job was killed before it created it
    deps.state.put(pk, sk.ACTIVE_JOB, {"job_name": "nacelle-0123456789abcdef-1", "since": deps.clock().isoformat()})
    assert "is running" in on_retrain_check(deps, deps.clock()).detail  # within the grace period: it may be starting
    deps.clock.advance(CLAIM_GRACE_S + 1)
    outcome = on_retrain_check(deps, deps.clock())
    assert outcome.action == "started" and len(deps.training.started) == 1  # the claim was given back
