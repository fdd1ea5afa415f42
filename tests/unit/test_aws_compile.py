"""SageMakerCompile (Processing job) and SageMakerNeo (compilation job): the exact requests (the Stubber checks them
against the service model), error mapping, describe mapping, the container script run by /bin/sh in a temporary
layout, and a start/describe round trip on moto (which completes jobs at once and accepts duplicate names, so
JobAlreadyExists is tested with the Stubber only)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from shared.aws.compile import (
    CODE_DIR,
    FAILURE_FILE,
    MANIFEST_FILE,
    MODEL_DIR,
    OUTPUT_DIR,
    PROCESSING_ROOT,
    VALIDATION_DIR,
    SageMakerCompile,
    container_script,
)
from shared.aws.neo import INPUT_NAME, SageMakerNeo
from shared.errors import AdapterError, ConfigurationError, JobAlreadyExists, JobNotFound
from shared.ports import CompileRequest, NeoRequest

REGION = "eu-west-1"
BUCKET = "nacelle-data"
IMAGE = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.5-cpu-py311"
ROLE = "arn:aws:iam::123456789012:role/nacelle-compile"
SOURCE_KEY = "artifacts/sourcedir.tar.gz"
JOB = "nacelle-compile-nacelle-turbine-3-1"
GROUP = "nacelle-turbine"
MODEL_KEY = "jobs/nacelle-turbine-20260102-abcdef/output/model.tar.gz"
MANIFEST_KEY = "datasets/nacelle-turbine/abc123.json"
PREFIX = "compiled/nacelle-turbine/3/"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SCRIPT = ('r=/opt/ml; cd $r/processing/input/code && tar xzf sourcedir.tar.gz && '
          'pip install -q -r requirements.txt && python -m training_jobs.compile "$@" || '
          '{ s=$?; mkdir -p $r/output; cp $r/processing/output/failure $r/output/message; exit $s; }')


def _sagemaker() -> Any:
    return boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")


def _compile(client: Any = None, source_key: str = SOURCE_KEY) -> SageMakerCompile:
    return SageMakerCompile(BUCKET, IMAGE, ROLE, "ml.m5.large", source_key, REGION, client=client,
                            max_runtime_s=1200)


def _stubbed() -> tuple[SageMakerCompile, Stubber]:
    client = _sagemaker()
    return _compile(client), Stubber(client)


def _request(**extra: Any) -> CompileRequest:
    fields: dict[str, Any] = {"job_name": JOB, "group": GROUP, "version": 3, "model_data_key": MODEL_KEY,
                              "output_prefix": PREFIX, **extra}
    return CompileRequest(**fields)


def _s3_input(name: str, key: str, local_path: str, data_type: str = "S3Prefix") -> dict[str, Any]:
    return {"InputName": name, "S3Input": {"S3Uri": f"s3://{BUCKET}/{key}", "LocalPath": local_path,
                                           "S3DataType": data_type, "S3InputMode": "File",
                                           "S3DataDistributionType": "FullyReplicated"}}


def _expected(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ProcessingJobName": JOB,
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large",
                                                  "VolumeSizeInGB": 10}},
        "StoppingCondition": {"MaxRuntimeInSeconds": 1200},
        "AppSpecification": {
            "ImageUri": IMAGE,
            "ContainerEntrypoint": ["/bin/sh", "-c", SCRIPT, "compile"],
            "ContainerArguments": ["--model-version", "3", "--model-data", f"s3://{BUCKET}/{MODEL_KEY}"],
        },
        "ProcessingInputs": inputs,
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "bundle", "S3Output": {
            "S3Uri": f"s3://{BUCKET}/compiled/nacelle-turbine/3", "LocalPath": "/opt/ml/processing/output",
            "S3UploadMode": "EndOfJob"}}]},
        "RoleArn": ROLE,
        "Environment": {"NACELLE_GROUP": GROUP, "NACELLE_MODEL_VERSION": "3"},
        "Tags": [{"Key": "nacelle:group", "Value": GROUP}, {"Key": "nacelle:model_version", "Value": "3"}],
    }


CREATED = {"ProcessingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:processing-job/{JOB}"}


# -- SageMakerCompile.start ------------------------------------------------------------------------
def test_start_sends_the_processing_request_with_the_validation_manifest() -> None:
    compiler, stub = _stubbed()
    stub.add_response("create_processing_job", CREATED, _expected([
        _s3_input("code", SOURCE_KEY, "/opt/ml/processing/input/code"),
        _s3_input("model", MODEL_KEY, "/opt/ml/processing/input/model"),
        _s3_input("validation", MANIFEST_KEY, "/opt/ml/processing/input/validation", "ManifestFile"),
    ]))
    with stub:
        compiler.start(_request(validation_manifest_key=MANIFEST_KEY))
    stub.assert_no_pending_responses()


def test_start_without_a_validation_manifest_has_no_validation_input() -> None:
    compiler, stub = _stubbed()
    stub.add_response("create_processing_job", CREATED, _expected([
        _s3_input("code", SOURCE_KEY, "/opt/ml/processing/input/code"),
        _s3_input("model", MODEL_KEY, "/opt/ml/processing/input/model"),
    ]))
    with stub:
        compiler.start(_request())
    stub.assert_no_pending_responses()


def test_a_taken_name_is_job_already_exists() -> None:
    compiler, stub = _stubbed()
    stub.add_client_error("create_processing_job", "ResourceInUse", f"Job {JOB} already exists")
    with stub, pytest.raises(JobAlreadyExists) as info:
        compiler.start(_request())
    assert info.value.__cause__ is not None


def test_other_create_errors_are_adapter_errors() -> None:
    compiler, stub = _stubbed()
    stub.add_client_error("create_processing_job", "ResourceLimitExceeded", "quota")
    with stub, pytest.raises(AdapterError):
        compiler.start(_request())


def test_container_strings_stay_within_the_api_limit() -> None:
    params = _compile().job_request(_request(validation_manifest_key=MANIFEST_KEY))
    app = params["AppSpecification"]
    assert all(len(s) <= 256 for s in app["ContainerEntrypoint"] + app["ContainerArguments"])
    with pytest.raises(ConfigurationError):  # the script would exceed 256 characters
        _compile(source_key=f"artifacts/{'x' * 60}.tar.gz")
    with pytest.raises(ConfigurationError):
        _compile(source_key="artifacts/sourcedir.zip")
    with pytest.raises(ConfigurationError):  # --model-data URI over 256 characters
        _compile().job_request(_request(model_data_key=f"jobs/{'y' * 250}/model.tar.gz"))


def test_the_layout_and_arguments_match_the_compile_job() -> None:
    from shared.ml.bundle import MANIFEST_FILE as BUNDLE_MANIFEST
    from training_jobs import compile as job

    assert (FAILURE_FILE, MANIFEST_FILE) == (job.FAILURE_FILE, BUNDLE_MANIFEST)
    root = Path(PROCESSING_ROOT)
    assert root == job.DEFAULT_PROCESSING_ROOT
    assert (Path(MODEL_DIR), Path(VALIDATION_DIR), Path(OUTPUT_DIR)) == (
        root / "input" / "model", root / "input" / "validation", root / "output")
    assert Path(CODE_DIR).parent == root / "input"
    args = job.parse_args(_compile().job_request(_request())["AppSpecification"]["ContainerArguments"])
    assert (args.model, args.out, args.validation) == (None, None, None)  # the Processing layout
    assert (args.model_version, args.model_data) == (3, f"s3://{BUCKET}/{MODEL_KEY}")


# -- the container script, run by /bin/sh --------------------------------------------------------------
FAKE_JOB = """\
import json, os, sys
from pathlib import Path
out = Path(os.environ["NACELLE_PROCESSING_ROOT"]) / "output"
out.mkdir(parents=True, exist_ok=True)
(out / "argv.json").write_text(json.dumps(sys.argv[1:]))
if "13" in sys.argv:
    (out / "failure").write_text("ONNX Runtime and PyTorch disagree")
    sys.exit(3)
"""


def _layout(tmp_path: Path) -> Path:
    """<ml root>/processing/input/code/sourcedir.tar.gz holding a fake training_jobs.compile."""
    code = tmp_path / "processing" / "input" / "code"
    code.mkdir(parents=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in (("requirements.txt", ""), ("training_jobs/__init__.py", ""),
                           ("training_jobs/compile.py", FAKE_JOB)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (code / "sourcedir.tar.gz").write_bytes(buffer.getvalue())
    return tmp_path


def _run(root: Path, version: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "NACELLE_PROCESSING_ROOT": str(root / "processing"), "PIP_NO_INDEX": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    script = container_script("sourcedir.tar.gz", ml_root=str(root))
    return subprocess.run(["/bin/sh", "-c", script, "compile", "--model-version", version, "--model-data",
                           "s3://b/k with space.tar.gz"], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_script_runs_the_job_with_the_container_arguments(tmp_path: Path) -> None:
    root = _layout(tmp_path)
    done = _run(root, "3")
    assert done.returncode == 0, done.stderr
    argv = json.loads((root / "processing" / "output" / "argv.json").read_text())
    assert argv == ["--model-version", "3", "--model-data", "s3://b/k with space.tar.gz"]
    assert not (root / "output" / "message").exists()


def test_a_failed_job_keeps_its_exit_status_and_leaves_its_reason_as_exit_message(tmp_path: Path) -> None:
    root = _layout(tmp_path)
    done = _run(root, "13")
    assert done.returncode == 3
    assert (root / "output" / "message").read_text() == "ONNX Runtime and PyTorch disagree"


# -- SageMakerCompile.describe ---------------------------------------------------------------------------
def _described(status: str, output_uri: str = f"s3://{BUCKET}/compiled/nacelle-turbine/3", **extra: Any
               ) -> dict[str, Any]:
    return {
        "ProcessingJobName": JOB, "ProcessingJobArn": CREATED["ProcessingJobArn"], "ProcessingJobStatus": status,
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large",
                                                  "VolumeSizeInGB": 10}},
        "AppSpecification": {"ImageUri": IMAGE},
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "bundle", "S3Output": {
            "S3Uri": output_uri, "LocalPath": "/opt/ml/processing/output", "S3UploadMode": "EndOfJob"}}]},
        "CreationTime": NOW, **extra}


def test_describe_completed_job_gives_the_manifest_key() -> None:
    compiler, stub = _stubbed()
    stub.add_response("describe_processing_job", _described("Completed"), {"ProcessingJobName": JOB})
    with stub:
        job = compiler.describe(JOB)
    assert (job.job_name, job.status, job.failure_reason, job.model_artifact_key) == (
        JOB, "Completed", None, "compiled/nacelle-turbine/3/manifest.json")


def test_describe_failed_job_gives_the_reasons_and_no_manifest() -> None:
    compiler, stub = _stubbed()
    stub.add_response("describe_processing_job", _described(
        "Failed", FailureReason="AlgorithmError: See job logs for more information",
        ExitMessage="ONNX Runtime and PyTorch disagree\n"), {"ProcessingJobName": JOB})
    stub.add_response("describe_processing_job", _described("InProgress"), {"ProcessingJobName": JOB})
    with stub:
        failed = compiler.describe(JOB)
        running = compiler.describe(JOB)
    assert (failed.status, failed.model_artifact_key) == ("Failed", None)
    assert failed.failure_reason == ("AlgorithmError: See job logs for more information; "
                                     "ONNX Runtime and PyTorch disagree")
    assert (running.status, running.failure_reason, running.model_artifact_key) == ("InProgress", None, None)


def test_describe_a_completed_job_writing_elsewhere_is_an_adapter_error() -> None:
    compiler, stub = _stubbed()
    stub.add_response("describe_processing_job", _described("Completed", "s3://other-bucket/compiled/x/3"),
                      {"ProcessingJobName": JOB})
    with stub, pytest.raises(AdapterError):
        compiler.describe(JOB)


@pytest.mark.parametrize("code", ["ValidationException", "ResourceNotFound"])
def test_describe_unknown_job_is_job_not_found(code: str) -> None:
    compiler, stub = _stubbed()
    stub.add_client_error("describe_processing_job", code, "Could not find requested job with name nope")
    with stub, pytest.raises(JobNotFound):
        compiler.describe("nope")


def test_start_and_describe_on_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        client = boto3.client("sagemaker", region_name=REGION)
        compiler = _compile(client)
        compiler.start(_request(validation_manifest_key=MANIFEST_KEY))
        job = compiler.describe(JOB)
        sent = client.describe_processing_job(ProcessingJobName=JOB)
        with pytest.raises(JobNotFound):
            compiler.describe("never-started")
    assert (job.status, job.model_artifact_key) == ("Completed", "compiled/nacelle-turbine/3/manifest.json")
    assert [i["InputName"] for i in sent["ProcessingInputs"]] == ["code", "model", "validation"]
    assert sent["AppSpecification"]["ContainerEntrypoint"][2] == SCRIPT


# -- SageMakerNeo ------------------------------------------------------------------------------------------
NEO_JOB = "nacelle-neo-nacelle-turbine-3"
ONNX_ARCHIVE = "compiled/nacelle-turbine/3/model-onnx.tar.gz"
NEO_CREATED = {"CompilationJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:compilation-job/{NEO_JOB}"}


def _neo_request(target: str, key: str = ONNX_ARCHIVE) -> NeoRequest:
    return NeoRequest(NEO_JOB, key, PREFIX + "neo/", target, (1, 6, 100))


def _neo_stubbed(**options: Any) -> tuple[SageMakerNeo, Stubber]:
    client = _sagemaker()
    return SageMakerNeo(BUCKET, ROLE, client=client, **options), Stubber(client)


def _neo_expected(output: dict[str, Any]) -> dict[str, Any]:
    return {
        "CompilationJobName": NEO_JOB,
        "RoleArn": ROLE,
        "InputConfig": {"S3Uri": f"s3://{BUCKET}/{ONNX_ARCHIVE}", "DataInputConfig": '{"windows": [1, 6, 100]}',
                        "Framework": "ONNX"},
        "OutputConfig": {"S3OutputLocation": f"s3://{BUCKET}/compiled/nacelle-turbine/3/neo", **output},
        "StoppingCondition": {"MaxRuntimeInSeconds": 900},
    }


def test_neo_request_for_a_target_device() -> None:
    neo, stub = _neo_stubbed()
    stub.add_response("create_compilation_job", NEO_CREATED, _neo_expected({"TargetDevice": "ml_c5"}))
    with stub:
        neo.start(_neo_request("ml_c5"))
    stub.assert_no_pending_responses()


def test_neo_request_for_a_target_platform() -> None:
    neo, stub = _neo_stubbed()
    stub.add_response("create_compilation_job", NEO_CREATED,
                      _neo_expected({"TargetPlatform": {"Os": "LINUX", "Arch": "ARM64"}}))
    with stub:
        neo.start(_neo_request("LINUX/ARM64"))
    stub.assert_no_pending_responses()


def test_neo_request_for_an_nvidia_platform_carries_the_compiler_options() -> None:
    options = {"gpu-code": "sm_72", "trt-ver": "8.5.2", "cuda-ver": "11.4"}
    neo, stub = _neo_stubbed(compiler_options=options)
    stub.add_response("create_compilation_job", NEO_CREATED, _neo_expected({
        "TargetPlatform": {"Os": "LINUX", "Arch": "ARM64", "Accelerator": "NVIDIA"},
        "CompilerOptions": json.dumps(options, sort_keys=True)}))
    with stub:
        neo.start(_neo_request("linux/arm64/nvidia"))
    stub.assert_no_pending_responses()


@pytest.mark.parametrize("target", ["ml_c9", "", "LINUX", "LINUX/", "WINDOWS/X86_64", "LINUX/RISCV",
                                    "LINUX/ARM64/TPU", "LINUX/ARM64/MALI/extra", "LINUX/ARM64/NVIDIA"])
def test_an_invalid_target_is_a_configuration_error(target: str) -> None:
    neo, stub = _neo_stubbed()  # nothing stubbed: any call would fail the test
    with stub, pytest.raises(ConfigurationError):
        neo.start(_neo_request(target))


def test_neo_refuses_inputs_it_cannot_read() -> None:
    neo = SageMakerNeo(BUCKET, ROLE, client=_sagemaker())
    with pytest.raises(ConfigurationError):
        neo.job_request(_neo_request("ml_c5", key="compiled/nacelle-turbine/3/model.onnx"))
    with pytest.raises(ConfigurationError):
        neo.job_request(NeoRequest(NEO_JOB, ONNX_ARCHIVE, PREFIX, "ml_c5", (1, 0, 100)))


def test_neo_name_taken_is_job_already_exists() -> None:
    neo, stub = _neo_stubbed()
    stub.add_client_error("create_compilation_job", "ResourceInUse", "already exists")
    stub.add_client_error("create_compilation_job", "ResourceLimitExceeded", "quota")
    with stub:
        with pytest.raises(JobAlreadyExists):
            neo.start(_neo_request("ml_c5"))
        with pytest.raises(AdapterError):
            neo.start(_neo_request("ml_c5"))


def test_neo_input_name_is_the_onnx_graph_input() -> None:
    from training_jobs.onnx_export import INPUT_NAME as GRAPH_INPUT

    assert INPUT_NAME == GRAPH_INPUT


def test_neo_start_on_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        client = boto3.client("sagemaker", region_name=REGION)
        SageMakerNeo(BUCKET, ROLE, client=client).start(_neo_request("LINUX/ARM64"))
        sent = client.describe_compilation_job(CompilationJobName=NEO_JOB)
    assert sent["InputConfig"]["Framework"] == "ONNX"
    assert sent["OutputConfig"]["TargetPlatform"] == {"Os": "LINUX", "Arch": "ARM64"}
