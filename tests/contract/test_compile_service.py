"""CompileService contract: LocalCompile, SageMakerCompile and the FakeCompile double behave alike.

Each backend uses what can express the behaviour under test:
* local: LocalCompile on a JobTable in tmp_path, with `spawn_runner` replaced by a fake returning a pid (the runner
  itself is tested in tests/unit/test_local_compile.py); a job ends as the runner ends it (`JobTable.finish`);
* AWS: SageMakerCompile on moto for start/describe (moto completes a Processing job at once); a botocore Stubber for
  what moto cannot do: refuse a taken name (ResourceInUse) and end a job Failed with an ExitMessage;
* the double: FakeCompile, whose jobs stay InProgress until `finish`.

"What the job carries" is compared in one shape: the JobTable record's request locally, the CreateProcessingJob
parameters on AWS (read back with DescribeProcessingJob on moto, captured from the call on the Stubber).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import boto3
import pytest
from botocore.stub import ANY, Stubber

import nacelle.local.adapters.training
from nacelle.local.adapters.jobs import JobTable
from nacelle.local.adapters.paths import StackPaths
from nacelle.local.adapters.training import LocalCompile
from shared.aws.compile import SageMakerCompile
from shared.errors import JobAlreadyExists, JobNotFound
from shared.ports import CompileRequest, CompileService, TrainingStatus
from tests.fakes import FakeCompile

REGION = "eu-west-1"
BUCKET = "nacelle-contract-data"
IMAGE = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.5-cpu-py311"
ROLE = "arn:aws:iam::123456789012:role/nacelle-compile"
SOURCE_KEY = "code/sourcedir.tar.gz"
JOB = "nacelle-compile-nacelle-turbine-3-1"
FAKE_PID = 434343
ARN = f"arn:aws:sagemaker:{REGION}:123456789012:processing-job/{JOB}"

FULL = CompileRequest(JOB, "nacelle-turbine", 3, "jobs/j3/output/model.tar.gz", "compiled/nacelle-turbine/3/",
                      "datasets/nacelle-turbine/abc.json")
MINIMAL = CompileRequest(JOB, "nacelle-turbine", 3, "jobs/j3/output/model.tar.gz", "compiled/nacelle-turbine/3/")
# The same name again, with other content: a retry must not replace the job that holds the name.
RETRY = CompileRequest(JOB, "nacelle-turbine", 4, "jobs/j4/output/model.tar.gz", "compiled/nacelle-turbine/4/")


class Backend(Protocol):
    service: CompileService
    statuses: frozenset[TrainingStatus]  # what describe can report right after start

    def carried(self, job_name: str) -> CompileRequest: ...


class EndingBackend(Backend, Protocol):
    def end(self, request: CompileRequest, status: TrainingStatus, reason: str | None) -> None:
        """End the job as the backend's runner would: Completed (its bundle written) or Failed with a reason."""
        ...


# -- local ------------------------------------------------------------------------------------------------------


class LocalBackend:
    statuses: frozenset[TrainingStatus] = frozenset({"InProgress"})  # the (fake) runner never ends the job

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths = StackPaths(tmp_path / "home")
        self.jobs = JobTable(self.paths.jobs_db)
        self.spawned: list[str] = []
        monkeypatch.setattr(nacelle.local.adapters.training, "spawn_runner", self._spawn)
        self.service: CompileService = LocalCompile(self.paths, self.jobs)

    def _spawn(self, home: Path, name: str, log_file: Path) -> int:
        self.spawned.append(name)
        return FAKE_PID

    def carried(self, job_name: str) -> CompileRequest:
        record = self.jobs.get(job_name)
        assert (record.kind, record.pid) == ("compile", FAKE_PID)
        return CompileRequest(**record.request)

    def end(self, request: CompileRequest, status: TrainingStatus, reason: str | None) -> None:
        # as nacelle.local.runtime.jobrunner.run_compile ends it
        self.jobs.finish(request.job_name, status, reason,
                         request.output_prefix + "manifest.json" if status == "Completed" else None)


# -- the double -------------------------------------------------------------------------------------------------


class FakeBackend:
    statuses: frozenset[TrainingStatus] = frozenset({"InProgress"})

    def __init__(self) -> None:
        self.fake = FakeCompile()
        self.service: CompileService = self.fake

    def carried(self, job_name: str) -> CompileRequest:
        return next(r for r in self.fake.started if r.job_name == job_name)

    def end(self, request: CompileRequest, status: TrainingStatus, reason: str | None) -> None:
        self.fake.finish(request.job_name, status, reason)


# -- AWS --------------------------------------------------------------------------------------------------------


def _key(uri: str) -> str:
    prefix = f"s3://{BUCKET}/"
    assert uri.startswith(prefix), uri
    return uri[len(prefix):]


def _carried_from_params(params: Mapping[str, Any], tags: list[dict[str, str]]) -> CompileRequest:
    """CreateProcessingJob parameters (or DescribeProcessingJob, same field shapes) and the job's tags back in
    request terms (moto does not return Environment, so group and version are read from the tags)."""
    inputs = {i["InputName"]: i["S3Input"] for i in params["ProcessingInputs"]}
    assert _key(inputs.pop("code")["S3Uri"]) == SOURCE_KEY
    validation = inputs.pop("validation", None)
    assert validation is None or validation["S3DataType"] == "ManifestFile"
    [output] = params["ProcessingOutputConfig"]["Outputs"]
    tagged = {t["Key"]: t["Value"] for t in tags}
    return CompileRequest(params["ProcessingJobName"], tagged["nacelle:group"], int(tagged["nacelle:model_version"]),
                          _key(inputs.pop("model")["S3Uri"]), _key(output["S3Output"]["S3Uri"]) + "/",
                          _key(validation["S3Uri"]) if validation else None)


def _sagemaker(client: Any) -> SageMakerCompile:
    return SageMakerCompile(BUCKET, IMAGE, ROLE, "ml.m5.large", SOURCE_KEY, REGION, client=client)


class MotoBackend:
    statuses: frozenset[TrainingStatus] = frozenset({"InProgress", "Completed"})  # moto completes at once

    def __init__(self) -> None:
        self.client = boto3.client("sagemaker", region_name=REGION)
        self.service: CompileService = _sagemaker(self.client)

    def carried(self, job_name: str) -> CompileRequest:
        job = self.client.describe_processing_job(ProcessingJobName=job_name)
        return _carried_from_params(job, self.client.list_tags(ResourceArn=job["ProcessingJobArn"])["Tags"])


class StubberBackend:
    """SageMaker's answers moto does not give. `carried` is what the first, successful CreateProcessingJob sent."""

    statuses: frozenset[TrainingStatus] = frozenset({"InProgress"})

    def __init__(self) -> None:
        client = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
        self.stub = Stubber(client)
        self.sent: list[dict[str, Any]] = []
        client.meta.events.register("provide-client-params.sagemaker.CreateProcessingJob", self._capture)
        self.service: CompileService = _sagemaker(client)

    def _capture(self, params: dict[str, Any], **_: Any) -> None:
        self.sent.append(json.loads(json.dumps(params)))

    def expect_create(self, request: CompileRequest, outcome: str = "created") -> None:
        expected = dict.fromkeys(("ProcessingResources", "StoppingCondition", "AppSpecification", "ProcessingInputs",
                                  "ProcessingOutputConfig", "RoleArn", "Environment", "Tags"), ANY)
        expected["ProcessingJobName"] = request.job_name
        if outcome == "created":
            self.stub.add_response("create_processing_job", {"ProcessingJobArn": ARN}, expected)
        else:  # what SageMaker answers for a taken name
            self.stub.add_client_error("create_processing_job", "ResourceInUse",
                                       f"Job {request.job_name} already exists", 400, expected_params=expected)

    def carried(self, job_name: str) -> CompileRequest:
        first = next(p for p in self.sent if p["ProcessingJobName"] == job_name)
        return _carried_from_params(first, first["Tags"])

    def end(self, request: CompileRequest, status: TrainingStatus, reason: str | None) -> None:
        """The next DescribeProcessingJob answers with the job ended; a reason is the job's own ExitMessage."""
        sent = next(p for p in self.sent if p["ProcessingJobName"] == request.job_name)
        described: dict[str, Any] = {
            "ProcessingJobName": request.job_name, "ProcessingJobArn": ARN, "ProcessingJobStatus": status,
            "ProcessingResources": sent["ProcessingResources"], "AppSpecification": sent["AppSpecification"],
            "ProcessingOutputConfig": sent["ProcessingOutputConfig"], "CreationTime": "2026-01-02T03:04:05Z"}
        if reason:
            described["ExitMessage"] = reason
        self.stub.add_response("describe_processing_job", described, {"ProcessingJobName": request.job_name})


@pytest.fixture(params=["local", "sagemaker", "fake"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    if request.param == "local":
        yield LocalBackend(tmp_path, monkeypatch)
    elif request.param == "fake":
        yield FakeBackend()
    else:
        request.getfixturevalue("aws")  # fake credentials, moto
        yield MotoBackend()


@pytest.fixture(params=["local", "sagemaker-stubber", "fake"])
def stubbable_backend(request: pytest.FixtureRequest, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> Iterator[EndingBackend]:
    """For a taken name and an ended job: local, the double, or a Stubber answering as SageMaker does."""
    if request.param == "local":
        yield LocalBackend(tmp_path, monkeypatch)
        return
    if request.param == "fake":
        yield FakeBackend()
        return
    stubbed = StubberBackend()
    stubbed.expect_create(FULL)
    with stubbed.stub:
        yield stubbed
    stubbed.stub.assert_no_pending_responses()


# -- contract ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [FULL, MINIMAL], ids=["with-validation", "model-only"])
def test_start_then_describe(backend: Backend, sent: CompileRequest) -> None:
    backend.service.start(sent)
    job = backend.service.describe(JOB)
    assert job.job_name == JOB
    assert job.status in backend.statuses
    assert job.failure_reason is None
    # the artifact is the bundle's manifest.json, and only once Completed
    assert job.model_artifact_key == (f"{sent.output_prefix}manifest.json" if job.status == "Completed" else None)
    assert backend.carried(JOB) == sent
    if isinstance(backend, LocalBackend):
        assert backend.spawned == [JOB]  # one runner, for that job


def test_jobs_are_independent(backend: Backend) -> None:
    other = CompileRequest(f"{JOB}-b", "nacelle-turbine", 5, "jobs/j5/output/model.tar.gz",
                           "compiled/nacelle-turbine/5/")
    backend.service.start(FULL)
    backend.service.start(other)
    assert backend.carried(JOB) == FULL
    assert backend.carried(other.job_name) == other
    assert backend.service.describe(other.job_name).job_name == other.job_name


def test_describe_unknown_job_raises_job_not_found(backend: Backend) -> None:
    with pytest.raises(JobNotFound):
        backend.service.describe("nacelle-compile-nobody-1-1")
    backend.service.start(MINIMAL)
    with pytest.raises(JobNotFound):
        backend.service.describe(f"{JOB}-other")


def test_starting_a_taken_name_raises_job_already_exists(stubbable_backend: EndingBackend) -> None:
    if isinstance(stubbable_backend, StubberBackend):
        stubbable_backend.expect_create(RETRY, "taken")
    stubbable_backend.service.start(FULL)
    with pytest.raises(JobAlreadyExists):
        stubbable_backend.service.start(RETRY)
    assert stubbable_backend.carried(JOB) == FULL  # the first job is kept as it was
    if isinstance(stubbable_backend, LocalBackend):
        assert stubbable_backend.spawned == [JOB]  # no second runner for the refused start


def test_a_completed_job_gives_its_manifest(stubbable_backend: EndingBackend) -> None:
    stubbable_backend.service.start(FULL)
    stubbable_backend.end(FULL, "Completed", None)
    job = stubbable_backend.service.describe(JOB)
    assert (job.status, job.failure_reason, job.model_artifact_key) == (
        "Completed", None, "compiled/nacelle-turbine/3/manifest.json")


def test_a_failed_job_gives_its_reason_and_no_artifact(stubbable_backend: EndingBackend) -> None:
    stubbable_backend.service.start(FULL)
    stubbable_backend.end(FULL, "Failed", "ONNX Runtime and PyTorch disagree")
    job = stubbable_backend.service.describe(JOB)
    assert (job.status, job.model_artifact_key) == ("Failed", None)
    assert job.failure_reason == "ONNX Runtime and PyTorch disagree"

