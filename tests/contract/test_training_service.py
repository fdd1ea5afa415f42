"""TrainingService contract: LocalTraining, SageMakerTraining and the FakeTraining double behave alike.

Each backend uses what can express the behaviour under test:
* local: LocalTraining on a JobTable in tmp_path, with `spawn_runner` replaced by a fake returning a pid, so no
  runner process starts and the job stays InProgress;
* AWS: SageMakerTraining on moto (`mock_aws`) for start/describe. moto 5.2 reports every job Completed at once and
  answers DescribeTrainingJob of an unknown name with ValidationException, as SageMaker does;
* AWS, duplicate names: moto silently accepts a second CreateTrainingJob under a taken name, so that behaviour runs
  on a botocore Stubber (request and response shapes checked against the SageMaker service model) that answers the
  second call with ResourceInUse, as SageMaker does;
* the double: FakeTraining, whose jobs stay InProgress.

"What the job carries" is compared in one shape for both: the JobTable record's request locally, the
CreateTrainingJob parameters on AWS (read back with DescribeTrainingJob/ListTags on moto, captured from the call on
the Stubber), with channel URIs turned back into keys and script-mode hyperparameters JSON-decoded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import boto3
import pytest
from botocore.stub import ANY, Stubber

import nacelle.local.adapters.training
from nacelle.local.adapters.jobs import JobTable
from nacelle.local.adapters.paths import StackPaths
from nacelle.local.adapters.training import LocalTraining
from shared.aws.training import SageMakerTraining
from shared.errors import JobAlreadyExists, JobNotFound
from shared.ports import TrainingRequest, TrainingService, TrainingStatus
from tests.fakes import FakeTraining

REGION = "eu-west-1"
BUCKET = "nacelle-contract-data"
IMAGE = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.5-cpu-py311"
ROLE = "arn:aws:iam::123456789012:role/nacelle-training"
SOURCE_KEY = "code/sourcedir.tar.gz"
JOB = "nacelle-turbine-20260102-1e50"
FAKE_PID = 424242
# A hex digest that JSON-decodes as a number (1e50000... -> inf) unless the adapter encodes it as a string.
DATASET_HASH = "1e5" + "0" * 61

FULL = TrainingRequest(
    job_name=JOB, dataset_manifest_key=f"datasets/nacelle-turbine/{DATASET_HASH}.json",
    hyperparameters={"epochs": "40", "dataset_hash": DATASET_HASH, "seed": "7"},
    spec_key="specs/nacelle-turbine/mini-turbine.yaml", champion_model_key="jobs/old-job/output/model.tar.gz",
    tags={"nacelle:group": "nacelle-turbine"})
MINIMAL = TrainingRequest(job_name=JOB, dataset_manifest_key=f"datasets/nacelle-turbine/{DATASET_HASH}.json",
                          hyperparameters={"dataset_hash": DATASET_HASH})
# The same name again, with other content: a retry must not replace the job that holds the name.
RETRY = TrainingRequest(job_name=JOB, dataset_manifest_key="datasets/nacelle-turbine/newer.json",
                        hyperparameters={"dataset_hash": "f" * 64, "epochs": "1"})


@dataclass(frozen=True)
class Carried:
    """What a started job was given, in one shape for every backend."""

    dataset_manifest_key: str
    hyperparameters: dict[str, str]
    spec_key: str | None
    champion_model_key: str | None
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, request: TrainingRequest) -> Carried:
        return cls(request.dataset_manifest_key, dict(request.hyperparameters), request.spec_key,
                   request.champion_model_key, dict(request.tags))


class Backend(Protocol):
    service: TrainingService
    statuses: frozenset[TrainingStatus]  # what describe can report right after start

    def carried(self, job_name: str) -> Carried: ...


# -- local ------------------------------------------------------------------------------------------------------


class LocalBackend:
    statuses: frozenset[TrainingStatus] = frozenset({"InProgress"})  # the (fake) runner never finishes the job

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths = StackPaths(tmp_path / "home")
        self.jobs = JobTable(self.paths.jobs_db)
        self.spawned: list[tuple[Path, str, Path]] = []
        monkeypatch.setattr(nacelle.local.adapters.training, "spawn_runner", self._spawn)
        self.service: TrainingService = LocalTraining(self.paths, self.jobs)

    def _spawn(self, home: Path, name: str, log_file: Path) -> int:
        self.spawned.append((home, name, log_file))
        return FAKE_PID

    def carried(self, job_name: str) -> Carried:
        request = self.jobs.get(job_name).request
        return Carried(request["dataset_manifest_key"], request["hyperparameters"], request["spec_key"],
                       request["champion_model_key"], request["tags"])

    def check_runner(self, job_name: str) -> None:
        """One runner per started job, for that job, and its pid recorded."""
        assert self.spawned == [(self.paths.home, job_name, self.paths.jobs_dir / job_name / "runner.log")]
        record = self.jobs.get(job_name)
        assert (record.kind, record.pid, record.job_dir) == ("training", FAKE_PID, self.paths.jobs_dir / job_name)


class FakeBackend:
    statuses: frozenset[TrainingStatus] = frozenset({"InProgress"})

    def __init__(self) -> None:
        self.fake = FakeTraining()
        self.service: TrainingService = self.fake

    def carried(self, job_name: str) -> Carried:
        return Carried.of(next(r for r in self.fake.started if r.job_name == job_name))


# -- AWS --------------------------------------------------------------------------------------------------------


def _key(uri: str) -> str:
    prefix = f"s3://{BUCKET}/"
    assert uri.startswith(prefix), uri
    return uri[len(prefix):]


def _carried_from_params(params: Mapping[str, Any], tags: list[dict[str, str]]) -> Carried:
    """CreateTrainingJob parameters (or DescribeTrainingJob, same field shapes) back in request terms."""
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in params["InputDataConfig"]}
    assert set(channels) <= {"train", "spec", "champion"}, channels
    train = channels["train"]
    assert train["S3DataType"] == "ManifestFile"  # the dataset manifest is an S3 ManifestFile, not a prefix
    # Script mode: every value JSON-encoded (the container decodes them); sagemaker_* are the adapter's own.
    hyperparameters = {k: json.loads(v) for k, v in params["HyperParameters"].items()}
    assert hyperparameters.pop("sagemaker_program") == "train_entry.py"
    assert hyperparameters.pop("sagemaker_submit_directory") == f"s3://{BUCKET}/{SOURCE_KEY}"
    assert hyperparameters.pop("sagemaker_region") == REGION
    return Carried(_key(train["S3Uri"]), hyperparameters,
                   _key(channels["spec"]["S3Uri"]) if "spec" in channels else None,
                   _key(channels["champion"]["S3Uri"]) if "champion" in channels else None,
                   {t["Key"]: t["Value"] for t in tags})


def _sagemaker(client: Any) -> SageMakerTraining:
    return SageMakerTraining(BUCKET, IMAGE, ROLE, "ml.m5.large", SOURCE_KEY, REGION, client=client)


class MotoBackend:
    # moto completes a job as soon as it is created; SageMaker reports InProgress first.
    statuses: frozenset[TrainingStatus] = frozenset({"InProgress", "Completed"})

    def __init__(self) -> None:
        self.client = boto3.client("sagemaker", region_name=REGION)
        self.service: TrainingService = _sagemaker(self.client)

    def carried(self, job_name: str) -> Carried:
        job = self.client.describe_training_job(TrainingJobName=job_name)
        tags = self.client.list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]
        return _carried_from_params(job, tags)


class StubberBackend:
    """SageMaker's answer to a taken name (ResourceInUse), which moto does not give. `carried` is what the first,
    successful CreateTrainingJob sent: the job SageMaker keeps."""

    statuses: frozenset[TrainingStatus] = frozenset({"InProgress"})

    def __init__(self) -> None:
        client = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
        self.stub = Stubber(client)
        self.sent: list[dict[str, Any]] = []
        client.meta.events.register("provide-client-params.sagemaker.CreateTrainingJob", self._capture)
        self.service: TrainingService = _sagemaker(client)

    def _capture(self, params: dict[str, Any], **_: Any) -> None:
        self.sent.append(json.loads(json.dumps(params)))

    def expect_create(self, request: TrainingRequest, outcome: str = "created") -> None:
        """One CreateTrainingJob for `request` (its content is checked through `carried`)."""
        expected = {"TrainingJobName": request.job_name, "AlgorithmSpecification": ANY, "RoleArn": ROLE,
                    "InputDataConfig": ANY, "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/jobs"},
                    "ResourceConfig": ANY, "StoppingCondition": ANY, "HyperParameters": ANY}
        if request.tags:
            expected["Tags"] = ANY
        if outcome == "created":
            arn = f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{request.job_name}"
            self.stub.add_response("create_training_job", {"TrainingJobArn": arn}, expected)
        else:  # what SageMaker answers for a taken name
            self.stub.add_client_error("create_training_job", "ResourceInUse",
                                       f"Training job {request.job_name} already exists", 400, expected_params=expected)

    def carried(self, job_name: str) -> Carried:
        first = next(p for p in self.sent if p["TrainingJobName"] == job_name)
        return _carried_from_params(first, first.get("Tags", []))


@pytest.fixture(params=["local", "sagemaker", "fake"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    if request.param == "fake":
        yield FakeBackend()
        return
    if request.param == "local":
        yield LocalBackend(tmp_path, monkeypatch)
        return
    request.getfixturevalue("aws")  # fake credentials, moto
    yield MotoBackend()


@pytest.fixture(params=["local", "sagemaker-stubber", "fake"])
def naming_backend(request: pytest.FixtureRequest, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    """For the duplicate-name behaviour: local, the double, or a Stubber answering the second CreateTrainingJob
    ResourceInUse."""
    if request.param == "fake":
        yield FakeBackend()
        return
    if request.param == "local":
        yield LocalBackend(tmp_path, monkeypatch)
        return
    stubbed = StubberBackend()
    stubbed.expect_create(FULL)
    stubbed.expect_create(RETRY, "taken")
    with stubbed.stub:
        yield stubbed
    stubbed.stub.assert_no_pending_responses()  # exactly two CreateTrainingJob calls, nothing else


# -- contract ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [FULL, MINIMAL], ids=["all-channels", "train-only"])
def test_start_then_describe(backend: Backend, sent: TrainingRequest) -> None:
    backend.service.start(sent)
    job = backend.service.describe(JOB)
    assert job.job_name == JOB
    assert job.status in backend.statuses
    assert job.failure_reason is None
    # a model only once Completed, always under the job's output prefix in the data bucket
    assert job.model_artifact_key == (f"jobs/{JOB}/output/model.tar.gz" if job.status == "Completed" else None)
    assert backend.carried(JOB) == Carried.of(sent)
    if isinstance(backend, LocalBackend):
        backend.check_runner(JOB)


def test_jobs_are_independent(backend: Backend) -> None:
    other = TrainingRequest(job_name=f"{JOB}-b", dataset_manifest_key="datasets/nacelle-turbine/other.json",
                            hyperparameters={"dataset_hash": "f" * 64})
    backend.service.start(FULL)
    backend.service.start(other)
    assert backend.carried(JOB) == Carried.of(FULL)
    assert backend.carried(other.job_name) == Carried.of(other)
    assert backend.service.describe(other.job_name).job_name == other.job_name


def test_describe_unknown_job_raises_job_not_found(backend: Backend) -> None:
    with pytest.raises(JobNotFound):
        backend.service.describe("nacelle-no-such-job")
    backend.service.start(MINIMAL)
    with pytest.raises(JobNotFound):
        backend.service.describe(f"{JOB}-other")


def test_starting_a_taken_name_raises_job_already_exists(naming_backend: Backend) -> None:
    naming_backend.service.start(FULL)
    with pytest.raises(JobAlreadyExists):
        naming_backend.service.start(RETRY)
    assert naming_backend.carried(JOB) == Carried.of(FULL)  # the first job is kept as it was
    if isinstance(naming_backend, LocalBackend):
        naming_backend.check_runner(JOB)  # no second runner for the refused start
        assert naming_backend.service.describe(JOB).status == "InProgress"
