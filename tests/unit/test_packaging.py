"""What `make deploy` ships: the training code archive, the layer folder, samconfig edits and image lookup.

The archive tests unpack sourcedir.tar.gz and run the training entry point and the compile step from it in a
subprocess that sees nothing of the repository: `python -S` (no site processing, so the venv's editable-install
finder for nacelle/shared/training_jobs is not loaded) with PYTHONPATH = the unpacked folder + the venv's
site-packages (the third-party packages the SageMaker image provides). A module missing from the archive fails
here instead of in a SageMaker job. No network, no AWS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from nacelle import aws_tools
from nacelle.aws_tools import (
    SOURCE_KEY,
    read_parameter_overrides,
    resolve_images,
    stack_outputs,
    upload_if_changed,
    write_parameter_overrides,
)
from nacelle.local.runtime.template import load_template
from nacelle.packaging import SOURCEDIR_NAME, build_layer, build_sourcedir, sourcedir_members
from shared.errors import ConfigurationError
from shared.version import code_version
from training_jobs.contract import job_environ

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.5-cpu-py311"
TINY_HPS = {"epochs": 1, "max_train_windows": 1500, "patience": 1}


# -- the archive -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sourcedir(tmp_path_factory.mktemp("sourcedir"))


@pytest.fixture(scope="module")
def unpacked(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("code")  # like /opt/ml/code
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


def names(archive: Path) -> list[str]:
    with tarfile.open(archive, "r:gz") as tar:
        return tar.getnames()


def test_archive_is_reproducible_byte_for_byte(archive: Path, tmp_path: Path) -> None:
    again = build_sourcedir(tmp_path)
    assert again.name == SOURCEDIR_NAME
    assert again.read_bytes() == archive.read_bytes()


def test_archive_members_are_normalised_and_sorted(archive: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    for m in members:
        assert m.isfile(), m.name
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644), m.name
    header = archive.read_bytes()[:10]
    assert header[4:8] == b"\0\0\0\0", "gzip header mtime must be 0"
    assert not header[3] & 0x08, "gzip header must record no file name"


def test_archive_holds_the_training_code_and_nothing_else(archive: Path) -> None:
    got = names(archive)
    assert not [n for n in got if "__pycache__" in n or n.endswith((".pyc", ".pyo")) or "/." in n]
    assert {"train_entry.py", "requirements.txt", "training_jobs/requirements.txt", "training_jobs/train.py",
            "training_jobs/compile.py", "shared/__init__.py", "shared/errors.py", "shared/version.py",
            "shared/ml/spec.py", "shared/specs/mini-turbine.yaml"} <= set(got)
    assert {n.split("/")[0] for n in got} == {"train_entry.py", "requirements.txt", "training_jobs", "shared"}
    # shared/ beyond what training and compile import stays out (aws adapters, use cases, settings...)
    assert not [n for n in got if n.startswith(("shared/aws/", "shared/usecases/")) or n == "shared/settings.py"]
    # every Python file of training_jobs/ is in it
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "training_jobs").rglob("*.py")
                if "__pycache__" not in p.parts}
    assert expected <= set(got)


def test_root_requirements_are_the_training_requirements(unpacked: Path) -> None:
    root = (unpacked / "requirements.txt").read_bytes()
    assert root == (ROOT / "training_jobs" / "requirements.txt").read_bytes()
    packages = {line.split("==")[0].split(">=")[0].strip().lower() for line in root.decode().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {"onnx", "onnxruntime"} <= packages
    assert "torch" not in packages, "the SageMaker PyTorch image provides torch; reinstalling it is slow and risky"


def test_archive_skips_caches_in_the_tree(tmp_path: Path) -> None:
    """A copy of the tree with stray caches and hidden files gives the same member list."""
    copy = tmp_path / "repo"
    for name, source in sourcedir_members(ROOT).items():
        if name != "requirements.txt":
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_bytes(source.read_bytes())
    (copy / "training_jobs" / "__pycache__").mkdir()
    (copy / "training_jobs" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"x")
    (copy / "shared" / "ml" / "__pycache__").mkdir()
    (copy / "shared" / "ml" / "__pycache__" / "spec.cpython-311.pyc").write_bytes(b"x")
    (copy / "shared" / "ml" / ".spec.py.swp").write_bytes(b"x")
    (copy / "training_jobs" / "notes.md").write_text("not code")
    assert sorted(sourcedir_members(copy)) == sorted(sourcedir_members(ROOT))


def isolated_env(code: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a process that sees the unpacked archive and third-party packages, not the repo."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "SM_", "NACELLE_")) and k not in ("TRAINING_JOB_NAME", "VIRTUAL_ENV")}
    site = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env["PYTHONPATH"] = os.pathsep.join([str(code), *site])
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # as in the SageMaker image; keeps the unpacked folder clean
    env["MPLBACKEND"] = "Agg"
    env.update(extra)
    return env


def run_isolated(code: Path, args: list[str], extra: dict[str, str] | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-S", *args], cwd=code, env=isolated_env(code, extra or {}),
                          capture_output=True, text=True, timeout=240)
    if check:
        assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_the_isolated_process_cannot_see_the_repository(unpacked: Path) -> None:
    proc = run_isolated(unpacked, ["-c", "import nacelle"], check=False)
    assert proc.returncode != 0 and "No module named 'nacelle'" in proc.stderr
    proc = run_isolated(unpacked, ["-c", "import shared, training_jobs; print(shared.__file__); "
                                         "print(training_jobs.__file__)"])
    assert all(Path(line).is_relative_to(unpacked) for line in proc.stdout.split()), proc.stdout


@pytest.fixture(scope="module")
def trained_from_archive(unpacked: Path, small_dataset: Path, tmp_path_factory: pytest.TempPathFactory
                         ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    job_dir = tmp_path_factory.mktemp("job") / "opt-ml"
    env = job_environ(job_dir, "nacelle-archive-test", {"train": small_dataset}, TINY_HPS)
    proc = run_isolated(unpacked, ["train_entry.py"], env)
    return job_dir, proc


def test_training_runs_from_the_unpacked_archive(trained_from_archive: tuple[Path, Any]) -> None:
    job_dir, proc = trained_from_archive
    manifest = json.loads((job_dir / "model" / "manifest.json").read_text())
    assert (job_dir / "model" / "model.pt").is_file()
    assert (job_dir / "output" / "data" / "report.png").is_file()
    assert not (job_dir / "output" / "failure").exists()
    assert "event_f1=" in proc.stdout
    # the archive holds the same ML source as the repository (code_version hashes shared/ml and training_jobs)
    assert manifest["lineage"]["code_version"] == code_version()
    assert manifest["lineage"]["job_name"] == "nacelle-archive-test"


def test_compile_runs_from_the_unpacked_archive(unpacked: Path, trained_from_archive: tuple[Path, Any],
                                                tmp_path: Path) -> None:
    job_dir, _ = trained_from_archive
    model = tmp_path / "model.tar.gz"
    with tarfile.open(model, "w:gz") as tar:  # as SageMaker packs SM_MODEL_DIR
        for path in sorted((job_dir / "model").iterdir()):
            tar.add(path, arcname=path.name)
    out = tmp_path / "edge"
    run_isolated(unpacked, ["-m", "training_jobs.compile", "--model", str(model), "--out", str(out)])
    assert (out / "model.onnx").is_file() and (out / "manifest.json").is_file()


def test_training_failure_from_the_archive_writes_the_failure_file(unpacked: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = job_environ(tmp_path / "opt-ml", "nacelle-archive-fail", {"train": empty}, TINY_HPS)
    proc = run_isolated(unpacked, ["train_entry.py"], env, check=False)
    assert proc.returncode == 1
    assert (tmp_path / "opt-ml" / "output" / "failure").read_text().strip()


def test_source_key_matches_the_template() -> None:
    resources = load_template()["Resources"]
    keys = {str(props["Properties"].get("Environment", {}).get("Variables", {}).get("NACELLE_TRAINING_SOURCE_KEY"))
            for props in resources.values() if props.get("Type") == "AWS::Serverless::Function"}
    assert SOURCE_KEY in keys


# -- the layer --------------------------------------------------------------------------------------
def test_layer_holds_shared_and_the_layer_requirements(tmp_path: Path) -> None:
    layer = build_layer(tmp_path)
    assert layer == tmp_path / "layer"
    assert (layer / "requirements.txt").read_bytes() == (ROOT / "deploy" / "layer-requirements.txt").read_bytes()
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "shared").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")}
    got = {p.relative_to(layer).as_posix() for p in (layer / "shared").rglob("*") if p.is_file()}
    assert got == expected
    assert {"shared/ml/validation.py", "shared/aws/s3.py", "shared/specs/mini-turbine.yaml"} <= got
    build_layer(tmp_path)  # rebuilding replaces its own output


def test_layer_requirements_cover_what_shared_imports() -> None:
    lines = (ROOT / "deploy" / "layer-requirements.txt").read_text().splitlines()
    pins = {line.split("==")[0].split("[")[0].strip().lower() for line in lines
            if line.strip() and not line.startswith("#")}
    assert {"numpy", "pyyaml", "aws-lambda-powertools", "pydantic", "boto3"} <= pins
    assert "torch" not in pins
    assert "[tracer,parser]" in "".join(lines)


def test_build_layer_refuses_to_delete_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "layer").mkdir()
    (tmp_path / "layer" / "precious.txt").write_text("keep")
    with pytest.raises(ConfigurationError, match="not a generated layer"):
        build_layer(tmp_path)
    assert (tmp_path / "layer" / "precious.txt").read_text() == "keep"


# -- samconfig.toml -----------------------------------------------------------------------------------
SAMCONFIG = """\
# top comment
version = 0.1

[default.global.parameters]
stack_name = "nacelle"

[default.deploy.parameters]
# deploy comment
capabilities = "CAPABILITY_IAM"
parameter_overrides = [
    "ModelPackageGroupName=nacelle-turbine",  # inline comment
    # a comment between entries
    "TrainingImageUri=111111111111.dkr.ecr.us-east-1.amazonaws.com/old:1",
    "LogLevel=INFO"
]
confirm_changeset = true

[default.validate.parameters]
lint = true
"""


def test_write_parameter_overrides_round_trip_keeps_entries_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "samconfig.toml"
    path.write_text(SAMCONFIG)
    write_parameter_overrides(path, {"TrainingImageUri": IMAGE, "ProcessingImageUri": IMAGE})
    text = path.read_text()
    assert read_parameter_overrides(path) == {"ModelPackageGroupName": "nacelle-turbine",
                                              "TrainingImageUri": IMAGE, "LogLevel": "INFO",
                                              "ProcessingImageUri": IMAGE}
    for comment in ("# top comment", "# deploy comment", "# inline comment", "# a comment between entries"):
        assert comment in text
    assert "old:1" not in text
    doc = tomllib.loads(text)
    original = tomllib.loads(SAMCONFIG)
    assert doc["default"]["global"] == original["default"]["global"]
    assert doc["default"]["validate"] == original["default"]["validate"]
    assert doc["default"]["deploy"]["parameters"]["confirm_changeset"] is True
    # only the replaced line and the appended entry differ
    removed = set(SAMCONFIG.splitlines()) - set(text.splitlines())
    assert removed == {'    "TrainingImageUri=111111111111.dkr.ecr.us-east-1.amazonaws.com/old:1",',
                       '    "LogLevel=INFO"'}
    # idempotent: the same overrides again change nothing
    write_parameter_overrides(path, {"TrainingImageUri": IMAGE, "ProcessingImageUri": IMAGE})
    assert path.read_text() == text


def test_write_parameter_overrides_on_the_project_samconfig(tmp_path: Path) -> None:
    path = tmp_path / "samconfig.toml"
    original = (ROOT / "samconfig.toml").read_text()
    path.write_text(original)
    before = read_parameter_overrides(path)
    write_parameter_overrides(path, {"TrainingImageUri": IMAGE, "ProcessingImageUri": IMAGE})
    after = read_parameter_overrides(path)
    assert after == {**before, "TrainingImageUri": IMAGE, "ProcessingImageUri": IMAGE}
    assert list(after)[:len(before)] == list(before)  # order kept, new keys last
    kept = [line for line in original.splitlines() if line.lstrip().startswith("#")]
    assert all(line in path.read_text().splitlines() for line in kept)


@pytest.mark.parametrize(("text", "expected"), [
    ('[default.deploy.parameters]\nparameter_overrides = "A=1 TrainingImageUri=x"\n', {"A": "1"}),
    ('[default.deploy.parameters]\nparameter_overrides = ["A=1"]\n', {"A": "1"}),
    ('[default.deploy.parameters]\nparameter_overrides = []\n', {}),
    ('[default.deploy.parameters]\ncapabilities = "CAPABILITY_IAM"\n\n[x]\ny = 1\n', {}),
    ('version = 0.1\n', {}),
    ('[default.deploy.parameters]\r\nparameter_overrides = [\r\n  "A=1",\r\n]\r\n', {"A": "1"}),
])
def test_write_parameter_overrides_handles_other_shapes(tmp_path: Path, text: str, expected: dict[str, str]) -> None:
    path = tmp_path / "samconfig.toml"
    path.write_bytes(text.encode())
    write_parameter_overrides(path, {"TrainingImageUri": IMAGE})
    assert read_parameter_overrides(path) == {**expected, "TrainingImageUri": IMAGE}
    if "[x]" in text:
        assert tomllib.loads(path.read_text())["x"] == {"y": 1}
    if "\r\n" in text:
        assert b"\n" not in path.read_bytes().replace(b"\r\n", b"")


def test_write_parameter_overrides_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "samconfig.toml"
    write_parameter_overrides(path, {"TrainingImageUri": IMAGE})
    assert read_parameter_overrides(path) == {"TrainingImageUri": IMAGE}


def test_write_parameter_overrides_rejects_unsafe_values(tmp_path: Path) -> None:
    path = tmp_path / "samconfig.toml"
    path.write_text(SAMCONFIG)
    for overrides in ({"Bad Key": "x"}, {"Key": "has space"}, {"Key": 'quo"te'}, {"Key": ""}):
        with pytest.raises(ConfigurationError):
            write_parameter_overrides(path, overrides)
    assert path.read_text() == SAMCONFIG


def test_write_parameter_overrides_leaves_invalid_toml_alone(tmp_path: Path) -> None:
    path = tmp_path / "samconfig.toml"
    path.write_text("[default.deploy.parameters\nbroken")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        write_parameter_overrides(path, {"TrainingImageUri": IMAGE})
    assert path.read_text() == "[default.deploy.parameters\nbroken"


# -- image URIs ---------------------------------------------------------------------------------------
@pytest.fixture
def no_sagemaker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import sagemaker...` fail whether or not the SDK is installed."""
    for name in [n for n in sys.modules if n == "sagemaker" or n.startswith("sagemaker.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("sagemaker", "sagemaker.core", "sagemaker.core.image_uris"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import raises ImportError


def test_resolve_images_without_the_sdk_says_how_to_install_it(no_sagemaker: None) -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve_images("eu-west-1")
    assert "pip install -e '.[aws-tools]'" in str(info.value)


def fake_sdk(monkeypatch: pytest.MonkeyPatch, uri: str) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def retrieve(framework: str, region: str, **kwargs: Any) -> str:
        calls.append((framework, region, kwargs))
        return uri

    image_uris = types.ModuleType("sagemaker.core.image_uris")
    image_uris.retrieve = retrieve  # type: ignore[attr-defined]
    core = types.ModuleType("sagemaker.core")
    core.image_uris = image_uris  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sagemaker", types.ModuleType("sagemaker"))
    monkeypatch.setitem(sys.modules, "sagemaker.core", core)
    monkeypatch.setitem(sys.modules, "sagemaker.core.image_uris", image_uris)
    return calls


def test_resolve_images_asks_the_sdk_for_the_pytorch_training_image(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_sdk(monkeypatch, IMAGE)
    assert resolve_images("eu-west-1") == {"TrainingImageUri": IMAGE, "ProcessingImageUri": IMAGE}
    assert calls == [("pytorch", "eu-west-1", {"version": "2.5", "py_version": "py311",
                                               "instance_type": "ml.m5.xlarge", "image_scope": "training"})]


def test_resolve_images_rejects_an_image_from_another_region(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_sdk(monkeypatch, IMAGE)
    with pytest.raises(ConfigurationError, match="not us-east-1"):
        resolve_images("us-east-1")


def test_images_command_writes_samconfig_and_dry_run_does_not(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    calls = fake_sdk(monkeypatch, IMAGE)
    path = tmp_path / "samconfig.toml"
    path.write_text(SAMCONFIG.replace('"LogLevel=INFO"', '"LogLevel=INFO", "TrainingInstanceType=ml.c5.2xlarge"'))
    original = path.read_text()
    parser = cli_parser()
    args = parser.parse_args(["aws", "images", "--region", "eu-west-1", "--samconfig", str(path), "--dry-run"])
    assert args.func(args) == 0
    assert path.read_text() == original
    assert calls[-1][2]["instance_type"] == "ml.c5.2xlarge"  # the configured training instance type
    args = parser.parse_args(["aws", "images", "--region", "eu-west-1", "--samconfig", str(path)])
    assert args.func(args) == 0
    assert read_parameter_overrides(path)["TrainingImageUri"] == IMAGE
    args = parser.parse_args(["aws", "region", "--samconfig", str(path)])
    capsys.readouterr()
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == "eu-west-1"


def cli_parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="nacelle")
    common = argparse.ArgumentParser(add_help=False)
    aws_tools.add_aws_commands(parser.add_subparsers(dest="command", required=True), common)
    return parser


def test_package_command_builds_both(tmp_path: Path) -> None:
    args = cli_parser().parse_args(["aws", "package", "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert (tmp_path / SOURCEDIR_NAME).is_file() and (tmp_path / "layer" / "shared" / "__init__.py").is_file()


# -- after sam deploy ---------------------------------------------------------------------------------
@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    with mock_aws():
        yield


def test_upload_if_changed_is_idempotent(aws_env: None, tmp_path: Path) -> None:
    s3 = boto3.client("s3", region_name="eu-west-1")
    s3.create_bucket(Bucket="data", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_versioning(Bucket="data", VersioningConfiguration={"Status": "Enabled"})
    archive = build_sourcedir(tmp_path)
    assert upload_if_changed("data", SOURCE_KEY, archive, client=s3) is True
    assert upload_if_changed("data", SOURCE_KEY, build_sourcedir(tmp_path / "again"), client=s3) is False
    assert s3.get_object(Bucket="data", Key=SOURCE_KEY)["Body"].read() == archive.read_bytes()
    changed = tmp_path / "changed.tar.gz"
    changed.write_bytes(b"other")
    assert upload_if_changed("data", SOURCE_KEY, changed, client=s3) is True
    assert len(s3.list_object_versions(Bucket="data", Prefix=SOURCE_KEY)["Versions"]) == 2


def stubbed_cloudformation(response: dict[str, Any] | None, error: str | None = None) -> tuple[Any, Stubber]:
    client = boto3.client("cloudformation", region_name="eu-west-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    stub = Stubber(client)
    if error:
        stub.add_client_error("describe_stacks", service_error_code="ValidationError", service_message=error,
                              expected_params={"StackName": "nacelle"})
    else:
        stub.add_response("describe_stacks", response or {}, {"StackName": "nacelle"})
    stub.activate()
    return client, stub


def test_stack_outputs_reads_the_bucket_output() -> None:
    response = {"Stacks": [{"StackName": "nacelle", "CreationTime": "2026-01-01T00:00:00Z",
                            "StackStatus": "UPDATE_COMPLETE",
                            "Outputs": [{"OutputKey": "DataBucketName", "OutputValue": "nacelle-databucket-1"}]}]}
    client, stub = stubbed_cloudformation(response)
    assert stack_outputs("nacelle", client=client) == {"DataBucketName": "nacelle-databucket-1"}
    stub.assert_no_pending_responses()


def test_stack_outputs_of_a_missing_or_unfinished_stack_is_a_configuration_error() -> None:
    client, _ = stubbed_cloudformation(None, error="Stack with id nacelle does not exist")
    with pytest.raises(ConfigurationError, match="deployed yet"):
        stack_outputs("nacelle", client=client)
    response = {"Stacks": [{"StackName": "nacelle", "CreationTime": "2026-01-01T00:00:00Z",
                            "StackStatus": "REVIEW_IN_PROGRESS"}]}
    client, _ = stubbed_cloudformation(response)
    with pytest.raises(ConfigurationError, match="REVIEW_IN_PROGRESS"):
        stack_outputs("nacelle", client=client)
