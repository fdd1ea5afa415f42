"""ModelRegistry contract: SageMakerRegistry (on moto), SqliteRegistry and the MemoryRegistry double behave alike.

moto 5.2 facts these tests rely on or work around:
* it returns CustomerMetadataProperties from DescribeModelPackage, so metadata round-trips through moto;
* it ignores ClientToken, so "same token, same version" on moto exercises the adapter's own token scan;
* its UpdateModelPackage resets every field not sent (status, approval description, metadata), unlike SageMaker;
  the update_metadata request itself is therefore checked with botocore's Stubber (which validates request and
  response shapes against the SageMaker service model), and status-preservation on the local registry.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from nacelle.local.adapters.registry import SqliteRegistry
from shared.aws.registry import SageMakerRegistry, client_token
from shared.errors import ConfigurationError, ModelVersionNotFound
from shared.ports import ModelRegistry
from tests.fakes import MemoryRegistry

BUCKET = "nacelle-data"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/nacelle-inference:1"
GROUP = "nacelle-turbine"
REGION = "eu-west-1"


@pytest.fixture(params=["sqlite", "sagemaker", "memory"])
def registry(request: pytest.FixtureRequest, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelRegistry]:
    if request.param == "memory":
        yield MemoryRegistry()
        return
    if request.param == "sqlite":
        yield SqliteRegistry(tmp_path / "registry.db", BUCKET)
        return
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield SageMakerRegistry(BUCKET, IMAGE, client=boto3.client("sagemaker", region_name=REGION))


def _register(registry: ModelRegistry, n: int, status: Any = "PendingManualApproval", **metadata: str) -> Any:
    return registry.register(GROUP, f"jobs/job-{n}/output/model.tar.gz", status, f"candidate {n}",
                             {"event_f1": "0.9", **metadata}, f"token-{n}")


# -- contract -------------------------------------------------------------------------------------------------------


def test_register_assigns_versions_one_two(registry: ModelRegistry) -> None:
    registry.ensure_group(GROUP, "turbine detectors")
    registry.ensure_group(GROUP, "turbine detectors")  # already there: fine
    first = _register(registry, 1)
    second = _register(registry, 2)
    assert (first.version, second.version) == (1, 2)
    assert first.group == GROUP
    assert first.status == "PendingManualApproval"
    assert first.model_data_key == "jobs/job-1/output/model.tar.gz"
    assert first.description == "candidate 1"
    assert first.metadata["event_f1"] == "0.9"
    assert first.metadata["nacelle:token"] == "token-1"
    assert first.created_at is not None
    assert first.arn.startswith("arn:aws:sagemaker:") and first.arn.endswith(f":model-package/{GROUP}/1")
    assert registry.get(GROUP, 2) == second


def test_same_token_returns_the_same_version(registry: ModelRegistry) -> None:
    registry.ensure_group(GROUP)
    first = _register(registry, 1)
    again = registry.register(GROUP, "jobs/other/output/model.tar.gz", "Approved", "retried", {}, "token-1")
    assert again == first
    assert [v.version for v in registry.list(GROUP)] == [1]


def test_list_filters_by_status_oldest_first(registry: ModelRegistry) -> None:
    registry.ensure_group(GROUP)
    _register(registry, 1, "Approved")
    _register(registry, 2, "PendingManualApproval")
    _register(registry, 3, "Approved")
    assert [v.version for v in registry.list(GROUP)] == [1, 2, 3]
    assert [v.version for v in registry.list(GROUP, "Approved")] == [1, 3]
    assert [v.version for v in registry.list(GROUP, "Rejected")] == []


def test_set_status_then_get(registry: ModelRegistry) -> None:
    registry.ensure_group(GROUP)
    _register(registry, 1)
    changed = registry.set_status(GROUP, 1, "Approved", "beats the champion", "alice")
    assert changed.status == "Approved"
    assert registry.get(GROUP, 1).status == "Approved"
    assert [v.version for v in registry.list(GROUP, "Approved")] == [1]


def test_unknown_version_is_not_found(registry: ModelRegistry) -> None:
    registry.ensure_group(GROUP)
    _register(registry, 1)
    with pytest.raises(ModelVersionNotFound):
        registry.get(GROUP, 7)
    with pytest.raises(ModelVersionNotFound):
        registry.set_status(GROUP, 7, "Approved", "x", "alice")
    with pytest.raises(ModelVersionNotFound):
        registry.update_metadata(GROUP, 7, {"nacelle:failed": "true"})


def test_update_metadata_marks_failed(registry: ModelRegistry) -> None:
    registry.ensure_group(GROUP)
    version = _register(registry, 1)
    assert not version.failed
    updated = registry.update_metadata(GROUP, 1, {"nacelle:failed": "true"})
    assert updated.failed
    assert registry.get(GROUP, 1).failed
    assert registry.get(GROUP, 1).metadata["event_f1"] == "0.9"  # merged, not replaced


@pytest.mark.parametrize("metadata", [
    {f"k{i}": "v" for i in range(50)},  # 50 + nacelle:token = 51 entries
    {"k" * 129: "v"},
    {"k": "v" * 257},
    {"k": ""},
    {"k": "comma,not,allowed"},
])
def test_metadata_beyond_sagemaker_limits_is_rejected(registry: ModelRegistry, metadata: dict[str, str]) -> None:
    registry.ensure_group(GROUP)
    with pytest.raises(ConfigurationError):
        registry.register(GROUP, "jobs/j/output/model.tar.gz", "PendingManualApproval", "", metadata, "token-x")
    assert registry.list(GROUP) == []


def test_metadata_at_sagemaker_limits_is_accepted(registry: ModelRegistry) -> None:
    registry.ensure_group(GROUP)
    metadata = {f"k{i:02d}" + "k" * 125: "v" * 256 for i in range(49)}  # + nacelle:token = 50
    version = registry.register(GROUP, "jobs/j/output/model.tar.gz", "PendingManualApproval", "", metadata, "t")
    assert len(version.metadata) == 50


def test_register_into_unknown_group_is_a_configuration_error(registry: ModelRegistry) -> None:
    with pytest.raises(ConfigurationError):
        _register(registry, 1)


# -- SageMaker adapter, request shapes (Stubber validates them against the service model) -----------------------

ARN = f"arn:aws:sagemaker:{REGION}:123456789012:model-package/{GROUP}/1"
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _described(status: str = "Approved", metadata: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "ModelPackageName": GROUP, "ModelPackageGroupName": GROUP, "ModelPackageVersion": 1, "ModelPackageArn": ARN,
        "ModelPackageDescription": "candidate 1", "CreationTime": CREATED, "ModelPackageStatus": "Completed",
        "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
        "ModelApprovalStatus": status,
        "InferenceSpecification": {"Containers": [{"Image": IMAGE,
                                                   "ModelDataUrl": f"s3://{BUCKET}/jobs/j1/output/model.tar.gz"}],
                                   "SupportedContentTypes": ["application/json"],
                                   "SupportedResponseMIMETypes": ["application/json"]},
        "CustomerMetadataProperties": metadata if metadata is not None else {"event_f1": "0.9", "nacelle:token": "t1"},
    }


def _stubbed(clock: Any = None) -> tuple[SageMakerRegistry, Stubber]:
    client = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    if clock is None:
        return SageMakerRegistry(BUCKET, IMAGE, client=client), Stubber(client)
    return SageMakerRegistry(BUCKET, IMAGE, client=client, clock=clock), Stubber(client)


def _expect_arn_lookup(stub: Stubber) -> None:
    stub.add_response("list_model_packages", {"ModelPackageSummaryList": [
        {"ModelPackageArn": ARN, "ModelPackageGroupName": GROUP, "ModelPackageVersion": 1, "CreationTime": CREATED,
         "ModelPackageStatus": "Completed"}]},
        {"ModelPackageGroupName": GROUP, "ModelPackageType": "Versioned", "SortBy": "CreationTime",
         "SortOrder": "Ascending"})


def test_sagemaker_update_metadata_sends_the_merged_map_and_keeps_the_status() -> None:
    registry, stub = _stubbed()
    _expect_arn_lookup(stub)
    stub.add_response("describe_model_package", _described(), {"ModelPackageName": ARN})
    stub.add_response("describe_model_package", _described(), {"ModelPackageName": ARN})
    merged = {"event_f1": "0.9", "nacelle:token": "t1", "nacelle:failed": "true"}
    # No ModelApprovalStatus in the update: resending "Approved" could fire the deploy rule again.
    stub.add_response("update_model_package", {"ModelPackageArn": ARN},
                      {"ModelPackageArn": ARN, "CustomerMetadataProperties": merged})
    stub.add_response("describe_model_package", _described(metadata=merged), {"ModelPackageName": ARN})
    with stub:
        updated = registry.update_metadata(GROUP, 1, {"nacelle:failed": "true"})
    stub.assert_no_pending_responses()
    assert updated.failed and updated.status == "Approved"
    assert updated.metadata == merged


def test_sagemaker_register_request_shape() -> None:
    registry, stub = _stubbed(clock=lambda: CREATED.replace(day=2))
    token = "train-nacelle-turbine-20260102-abcdef0123456789"  # > 36 characters: ClientToken becomes a uuid5
    assert len(client_token(token)) == 36 and client_token(token) == client_token(token) != token
    stub.add_response("describe_model_package_group", {
        "ModelPackageGroupName": GROUP, "ModelPackageGroupArn": f"arn:aws:sagemaker:{REGION}:123456789012:"
        f"model-package-group/{GROUP}", "CreationTime": CREATED, "CreatedBy": {},
        "ModelPackageGroupStatus": "Completed"}, {"ModelPackageGroupName": GROUP})
    # the token scan: packages of the last day, newest first
    stub.add_response("list_model_packages", {"ModelPackageSummaryList": []}, {
        "ModelPackageGroupName": GROUP, "ModelPackageType": "Versioned", "CreationTimeAfter": CREATED.replace(day=1),
        "SortBy": "CreationTime", "SortOrder": "Descending"})
    stub.add_response("create_model_package", {"ModelPackageArn": ARN}, {
        "ModelPackageGroupName": GROUP, "ModelPackageDescription": "candidate 1",
        "ModelApprovalStatus": "PendingManualApproval",
        "InferenceSpecification": {"Containers": [{"Image": IMAGE,
                                                   "ModelDataUrl": f"s3://{BUCKET}/jobs/j1/output/model.tar.gz"}],
                                   "SupportedContentTypes": ["application/json"],
                                   "SupportedResponseMIMETypes": ["application/json"]},
        "CustomerMetadataProperties": {"event_f1": "0.9", "nacelle:token": token},
        "ClientToken": client_token(token)})
    stub.add_response("describe_model_package", _described("PendingManualApproval",
                                                           {"event_f1": "0.9", "nacelle:token": token}),
                      {"ModelPackageName": ARN})
    with stub:
        version = registry.register(GROUP, "jobs/j1/output/model.tar.gz", "PendingManualApproval", "candidate 1",
                                    {"event_f1": "0.9"}, token)
    stub.assert_no_pending_responses()
    assert (version.version, version.model_data_key) == (1, "jobs/j1/output/model.tar.gz")
    assert version.metadata["nacelle:token"] == token
    assert client_token("short-token-1") == "short-token-1"  # valid tokens are sent as they are


def test_sagemaker_set_status_writes_actor_and_reason() -> None:
    registry, stub = _stubbed()
    _expect_arn_lookup(stub)
    stub.add_response("describe_model_package", _described("PendingManualApproval"), {"ModelPackageName": ARN})
    stub.add_response("update_model_package", {"ModelPackageArn": ARN}, {
        "ModelPackageArn": ARN, "ModelApprovalStatus": "Approved", "ApprovalDescription": "alice: beats champion"})
    stub.add_response("describe_model_package", _described("Approved"), {"ModelPackageName": ARN})
    with stub:
        assert registry.set_status(GROUP, 1, "Approved", "beats champion", "alice").status == "Approved"
    stub.assert_no_pending_responses()


def test_sagemaker_registry_without_an_image_reads_but_never_registers() -> None:
    client = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    registry, stub = SageMakerRegistry(BUCKET, client=client), Stubber(client)
    _expect_arn_lookup(stub)
    stub.add_response("describe_model_package", _described(), {"ModelPackageName": ARN})
    with stub:
        with pytest.raises(ConfigurationError, match="cannot register"):
            registry.register(GROUP, "jobs/j1/output/model.tar.gz", "PendingManualApproval", "", {}, "t1")
        assert registry.get(GROUP, 1).status == "Approved"  # the refusal made no call: the stub's first is this
    stub.assert_no_pending_responses()


# -- local registry only --------------------------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> tuple[SqliteRegistry, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    registry = SqliteRegistry(tmp_path / "registry.db", BUCKET, on_change=events.append)
    registry.ensure_group(GROUP)
    return registry, events


def test_history_records_actor_and_reason(local: tuple[SqliteRegistry, list[dict[str, Any]]]) -> None:
    registry, _ = local
    _register(registry, 1)
    registry.set_status(GROUP, 1, "Approved", "beats the champion", "alice")
    registry.set_status(GROUP, 1, "Rejected", "rolled back: alarms", "deployer")
    history = registry.history(GROUP, 1)
    assert [(h["status"], h["actor"], h["reason"]) for h in history] == [
        ("PendingManualApproval", "registry", "registered"),
        ("Approved", "alice", "beats the champion"),
        ("Rejected", "deployer", "rolled back: alarms"),
    ]
    assert all(h["version"] == 1 and datetime.fromisoformat(h["at"]).tzinfo is not None for h in history)
    with pytest.raises(ModelVersionNotFound):
        registry.history(GROUP, 2)


def test_update_metadata_keeps_the_status(local: tuple[SqliteRegistry, list[dict[str, Any]]]) -> None:
    registry, events = local
    _register(registry, 1, "Approved")
    assert registry.update_metadata(GROUP, 1, {"nacelle:failed": "true"}).status == "Approved"
    assert len(events) == 1  # metadata changes are no approval-status change


def test_on_change_events_have_the_aws_shape(local: tuple[SqliteRegistry, list[dict[str, Any]]]) -> None:
    registry, events = local
    _register(registry, 1)
    registry.set_status(GROUP, 1, "Approved", "good", "alice")
    registry.set_status(GROUP, 1, "Approved", "still good", "bob")  # no status change: no event
    assert len(events) == 2
    created, approved = events
    arn = f"arn:aws:sagemaker:local:000000000000:model-package/{GROUP}/1"
    assert set(created) == {"version", "id", "detail-type", "source", "account", "time", "region", "resources",
                            "detail"}
    assert created["version"] == "0"
    assert created["source"] == "aws.sagemaker"
    assert created["detail-type"] == "SageMaker Model Package State Change"
    assert (created["account"], created["region"], created["resources"]) == ("000000000000", "local", [arn])
    assert created["id"] != approved["id"]
    detail = created["detail"]
    assert detail["ModelPackageGroupName"] == GROUP
    assert detail["ModelPackageVersion"] == 1 and isinstance(detail["ModelPackageVersion"], int)
    assert detail["ModelPackageArn"] == arn
    assert detail["ModelPackageName"] == GROUP
    assert detail["ModelPackageStatus"] == "Completed"
    assert detail["ModelApprovalStatus"] == "PendingManualApproval"
    assert detail["CertifyForMarketplace"] is False
    assert detail["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == (
        f"s3://{BUCKET}/jobs/job-1/output/model.tar.gz")
    for stamp in (created["time"], detail["CreationTime"], detail["LastModifiedTime"]):
        assert datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    assert "ApprovalDescription" not in detail
    assert approved["detail"]["ModelApprovalStatus"] == "Approved"
    assert approved["detail"]["ApprovalDescription"] == "alice: good"
    json.dumps(events)  # plain JSON, as EventBridge delivers it


def test_events_match_the_rule_a_deployer_uses(local: tuple[SqliteRegistry, list[dict[str, Any]]]) -> None:
    """The AWS rule for approved packages selects the local event (moto's EventBridge applies patterns for real)."""
    registry, events = local
    _register(registry, 1)
    registry.set_status(GROUP, 1, "Approved", "good", "alice")
    pattern = {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Model Package State Change"],
               "detail": {"ModelPackageGroupName": [GROUP], "ModelApprovalStatus": ["Approved"]}}
    with mock_aws():
        eb = boto3.client("events", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        queue = sqs.create_queue(QueueName="approved")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        eb.put_rule(Name="approved", EventPattern=json.dumps(pattern))
        eb.put_targets(Rule="approved", Targets=[{"Id": "q", "Arn": queue_arn}])
        for event in events:  # replay what SageMaker would have put on the default bus
            eb.put_events(Entries=[{"Source": event["source"], "DetailType": event["detail-type"],
                                    "Resources": event["resources"], "Detail": json.dumps(event["detail"])}])
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert [json.loads(m["Body"])["detail"]["ModelApprovalStatus"] for m in messages] == ["Approved"]


def test_versions_are_unique_under_concurrent_registration(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    SqliteRegistry(db, BUCKET).ensure_group(GROUP)
    results: list[int] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:  # each thread has its own registry and connections, as separate processes would
            results.append(_register(SqliteRegistry(db, BUCKET), n).version)
        except BaseException as e:  # pragma: no cover - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == list(range(1, 13))


_WORKER = """
import sys
from pathlib import Path
from nacelle.local.adapters.registry import SqliteRegistry
registry = SqliteRegistry(Path(sys.argv[1]), "nacelle-data")
for n in range(5):
    v = registry.register("nacelle-turbine", "jobs/j/output/model.tar.gz", "PendingManualApproval", "",
                          {}, f"{sys.argv[2]}-{n}")
    print(v.version)
"""


def test_versions_are_unique_across_processes(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    SqliteRegistry(db, BUCKET).ensure_group(GROUP)
    root = Path(__file__).resolve().parents[2]
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(db), f"p{i}"], cwd=root, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(4)]
    outputs = [w.communicate(timeout=120) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err for _, err in outputs]
    versions = sorted(int(line) for out, _ in outputs for line in out.split())
    assert versions == list(range(1, 21))


def test_database_is_in_wal_mode(tmp_path: Path) -> None:
    import sqlite3

    SqliteRegistry(tmp_path / "registry.db", BUCKET)
    with sqlite3.connect(tmp_path / "registry.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_change_committed_by_a_process_killed_before_its_event_is_announced_later(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []

    def killed(event: dict[str, Any]) -> None:
        raise SystemExit("kill -9 right after the commit")

    registry = SqliteRegistry(tmp_path / "registry.db", BUCKET, on_change=events.append)
    registry.ensure_group(GROUP)
    _register(registry, 1)
    registry.on_change = killed
    with pytest.raises(SystemExit):
        registry.set_status(GROUP, 1, "Approved", "ship it", "alice")  # committed, its event never put
    assert registry.get(GROUP, 1).status == "Approved" and len(events) == 1
    SqliteRegistry(tmp_path / "registry.db", BUCKET, on_change=events.append)  # the next process to open it
    assert [e["detail"]["ModelApprovalStatus"] for e in events] == ["PendingManualApproval", "Approved"]
    SqliteRegistry(tmp_path / "registry.db", BUCKET, on_change=events.append)
    assert len(events) == 2  # announced once it was put
