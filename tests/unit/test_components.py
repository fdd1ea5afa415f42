"""Component packaging: deterministic zips, the model recipe, the detector build (import closure, recipe
rendering), publishing, and the detector's venv installer."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from nacelle.components import (
    COMPONENT_DIR,
    DETECTOR_ZIP,
    RECIPE_FILE,
    build,
    detector_entries,
    publish,
    shared_closure,
)
from nacelle.local.adapters.objectstore import FsObjectStore
from shared.components import (
    DETECTOR_COMPONENT,
    MODEL_COMPONENT,
    artifact_digest,
    artifact_digests,
    component_version,
    detector_prefix,
    deterministic_zip,
    model_artifact_key,
    model_bundle_zip,
    model_recipe,
)
from shared.errors import BundleError, ConfigurationError, Conflict

REPO = Path(__file__).resolve().parents[2]
INSTALLER = COMPONENT_DIR / "src" / "detector" / "install_venv.py"
WHEELHOUSE = REPO / "build" / "wheelhouse"
# Stands in for src/main.py while the detector runtime is not written yet; the real one is used once it exists.
STAND_IN_MAIN = "from detector import messages, pipeline, scoring  # noqa: F401\n"


def _manifest(files: dict[str, bytes], **extra: object) -> bytes:
    artifacts = {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()}
    return json.dumps({"model_version": 7, "edge": {"format_version": 1, "artifacts": artifacts}, **extra}).encode()


@pytest.fixture
def component(tmp_path: Path) -> Path:
    """A copy of greengrass_components/nacelle.detector (without its tests) that a test may change."""
    dst = tmp_path / DETECTOR_COMPONENT
    shutil.copytree(COMPONENT_DIR, dst, ignore=shutil.ignore_patterns("tests", "__pycache__", "conftest.py"))
    main = dst / "src" / "main.py"
    if not main.exists():
        main.write_text(STAND_IN_MAIN)
    return dst


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    (wheels / "numpy-9.9-py3-none-any.whl").write_bytes(b"numpy wheel bytes")
    (wheels / "awscrt-9.9-py3-none-any.whl").write_bytes(b"awscrt wheel bytes")
    (wheels / "README.txt").write_text("not a wheel")
    return wheels


# ------------------------------------------------------------------ shared.components
def test_names_and_keys() -> None:
    assert component_version(7) == "7.0.0"
    assert model_artifact_key(7) == "components/nacelle.model/7.0.0/bundle.zip"
    assert detector_prefix("1.2.3") == "components/nacelle.detector/1.2.3/"
    assert artifact_digest(b"abc") == "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
    for bad in (0, -1, True, "7"):
        with pytest.raises(ValueError, match="positive integer"):
            component_version(bad)  # type: ignore[arg-type]


def test_deterministic_zip_depends_only_on_entries() -> None:
    a = deterministic_zip({"b.txt": b"2", "a/x.py": b"1"})
    b = deterministic_zip({"a/x.py": b"1", "b.txt": b"2"})
    assert a == b
    with zipfile.ZipFile(io.BytesIO(a)) as zf:
        assert zf.namelist() == ["a/x.py", "b.txt"]
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert zf.read("a/x.py") == b"1"
    assert deterministic_zip({"a/x.py": b"1", "b.txt": b"3"}) != a


def test_model_bundle_zip_drops_neo_and_keeps_its_digest() -> None:
    files = {"model.onnx": b"onnx-bytes", "thresholds.json": b"{}"}
    manifest = _manifest(files)
    rewritten = json.loads(manifest)
    rewritten["neo"] = {"key": "compiled/g/7/neo/output/model.tar.gz", "sha256": "0" * 64}
    first = model_bundle_zip(manifest, files.__getitem__)
    second = model_bundle_zip(json.dumps(rewritten, indent=4).encode(), files.__getitem__)
    assert artifact_digest(first) == artifact_digest(second)
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        assert zf.namelist() == ["manifest.json", "model.onnx", "thresholds.json"]
        assert "neo" not in json.loads(zf.read("manifest.json"))
        assert zf.read("model.onnx") == b"onnx-bytes"
    other = {**files, "model.onnx": b"other"}
    changed = model_bundle_zip(_manifest(other), other.__getitem__)
    assert artifact_digest(changed) != artifact_digest(first)


@pytest.mark.parametrize("name", ["../x", "a/b", "manifest.json", ""])
def test_model_bundle_zip_refuses_unsafe_artifact_names(name: str) -> None:
    manifest = json.dumps({"edge": {"artifacts": {name: {"sha256": "0" * 64, "size": 1}}}}).encode()
    with pytest.raises(BundleError, match="plain file name"):
        model_bundle_zip(manifest, lambda n: b"x")
    with pytest.raises(BundleError, match=r"edge\.artifacts"):
        model_bundle_zip(b'{"edge": {}}', lambda n: b"x")


def test_model_recipe_installs_only_a_bundle_whose_digests_match(tmp_path: Path) -> None:
    files = {"model.onnx": b"onnx-bytes", "extra.bin": b"\x00\x01"}
    data = model_bundle_zip(_manifest(files), files.__getitem__)
    uri = "s3://bucket/" + model_artifact_key(7)
    recipe = model_recipe(7, uri, artifact_digest(data))
    assert recipe["RecipeFormatVersion"] == "2020-01-25"
    assert (recipe["ComponentName"], recipe["ComponentVersion"]) == (MODEL_COMPONENT, "7.0.0")
    [manifest] = recipe["Manifests"]
    assert manifest["Platform"] == {"os": "linux"}
    assert manifest["Artifacts"] == [{"Uri": uri, "Unarchive": "ZIP", "Digest": artifact_digest(data),
                                      "Algorithm": "SHA-256"}]
    assert artifact_digests(recipe) == {uri: artifact_digest(data)}
    install = manifest["Lifecycle"]["Install"]
    assert install["RequiresPrivilege"] is False

    unarchived = tmp_path / "artifacts-unarchived"  # Greengrass unarchives bundle.zip into <dir>/bundle/
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(unarchived / "bundle")
    script = install["Script"].replace("{artifacts:decompressedPath}", str(unarchived))
    ok = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    (unarchived / "bundle" / "extra.bin").write_bytes(b"tampered")
    bad = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
    assert "digest mismatch: extra.bin" in bad.stderr


# ------------------------------------------------------------------ import closure
def test_closure_walks_imports_and_skips_what_the_detector_does_not_use(component: Path) -> None:
    entries = detector_entries(component)
    names = set(entries)
    assert {"main.py", "requirements.txt", "install_venv.py", "detector/__init__.py", "detector/messages.py",
            "shared/__init__.py", "shared/errors.py", "shared/ml/__init__.py", "shared/ml/spec.py",
            "shared/ml/features.py", "shared/ml/episodes.py", "shared/ml/edge_bundle.py"} <= names
    assert "detector/install_venv.py" not in names  # at the root, where the recipe runs it
    assert not {"shared/ml/table.py", "shared/ml/dataset.py", "shared/ports.py", "shared/settings.py",
                "shared/components.py"} & names
    assert not any("__pycache__" in n or n.startswith(("shared/aws", "shared/usecases")) for n in names)
    for name in names:
        assert b"aws_lambda_powertools" not in entries[name] and b"import boto3" not in entries[name], name
    assert entries["shared/ml/spec.py"] == (REPO / "shared/ml/spec.py").read_bytes()


def test_closure_refuses_lambda_dependencies(tmp_path: Path) -> None:
    (tmp_path / "shared" / "ml").mkdir(parents=True)
    (tmp_path / "shared" / "__init__.py").write_text("")
    (tmp_path / "shared" / "ml" / "__init__.py").write_text("")
    (tmp_path / "shared" / "ml" / "a.py").write_text("from . import b\n")
    (tmp_path / "shared" / "ml" / "b.py").write_text("def f():\n    import pydantic\n")
    (tmp_path / "shared" / "ml" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import boto3\n")
    entry = tmp_path / "main.py"
    entry.write_text("from shared.ml import c\n")
    assert list(shared_closure([entry], tmp_path)) == ["shared/__init__.py", "shared/ml/__init__.py",
                                                       "shared/ml/c.py"]
    entry.write_text("from shared.ml.a import x\n")
    with pytest.raises(ConfigurationError, match=r"b\.py: imports 'pydantic'"):
        shared_closure([entry], tmp_path)
    entry.write_text("import shared.missing\n")
    with pytest.raises(ConfigurationError, match=r"'shared\.missing', not found"):
        shared_closure([entry], tmp_path)


def test_packaged_detector_imports_from_the_extracted_zip_alone(component: Path, wheelhouse: Path,
                                                                 tmp_path: Path) -> None:
    built = build(tmp_path / "build", wheelhouse, component_dir=component)
    root = tmp_path / "unarchived" / "detector"  # what Greengrass makes of detector.zip
    with zipfile.ZipFile(built.directory / DETECTOR_ZIP) as zf:
        zf.extractall(root)
    modules = sorted(f"detector.{p.stem}" for p in (root / "detector").glob("*.py") if p.stem != "__init__")
    probe = f"""
import importlib, sys
root = {str(root)!r}
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                    and "editable" not in getattr(f, "__name__", "").lower()]
sys.path[:] = [root] + [p for p in sys.path
                        if "site-packages" in p or "python3" in p and not p.startswith({str(REPO)!r})]
for name in {modules!r}:
    importlib.import_module(name)
import shared.ml.spec
own = {{n: m.__file__ for n, m in sys.modules.items() if n.split(".")[0] in ("shared", "detector", "nacelle")}}
outside = {{n: f for n, f in own.items() if not f.startswith(root)}}
assert not outside, outside
assert not any(n.split(".")[0] in ("boto3", "pydantic", "aws_lambda_powertools", "torch") for n in sys.modules)
print(len(own))
"""
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= len(modules) + 5


# ------------------------------------------------------------------ detector build and recipe
def test_build_renders_the_recipe_with_digests_of_the_artifacts(component: Path, wheelhouse: Path,
                                                                 tmp_path: Path) -> None:
    built = build(tmp_path / "build", wheelhouse, bucket="my-bucket", component_dir=component)
    version = (component / "VERSION").read_text().strip()
    assert built.directory == tmp_path / "build" / "components" / DETECTOR_COMPONENT / version
    recipe = json.loads((built.directory / RECIPE_FILE).read_text())
    assert recipe == built.recipe
    assert recipe["RecipeFormatVersion"] == "2020-01-25"
    assert (recipe["ComponentName"], recipe["ComponentVersion"]) == (DETECTOR_COMPONENT, version)
    assert recipe["ComponentDependencies"] == {
        MODEL_COMPONENT: {"VersionRequirement": ">=1.0.0", "DependencyType": "SOFT"},
        "aws.greengrass.TokenExchangeService": {"VersionRequirement": ">=2.0.0 <3.0.0", "DependencyType": "SOFT"}}
    [manifest] = recipe["Manifests"]
    assert manifest["Platform"] == {"os": "linux"}
    prefix = f"s3://my-bucket/{detector_prefix(version)}"
    names = ["detector.zip", "wheels/awscrt-9.9-py3-none-any.whl", "wheels/numpy-9.9-py3-none-any.whl"]
    assert [a["Uri"] for a in manifest["Artifacts"]] == [prefix + n for n in names]
    for artifact, name in zip(manifest["Artifacts"], names, strict=True):
        assert artifact["Digest"] == artifact_digest((built.directory / name).read_bytes())
        assert artifact["Algorithm"] == "SHA-256"
        assert artifact.get("Unarchive") == ("ZIP" if name.endswith(".zip") else None)
    assert (built.directory / "wheels" / "numpy-9.9-py3-none-any.whl").read_bytes() == b"numpy wheel bytes"

    config = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert config["topics"] == {"sensors": "turbines/{thing}/sensors", "anomalies": "turbines/{thing}/anomalies",
                                "health": "turbines/{thing}/health", "stats": "turbines/{thing}/stats"}
    assert config["healthIntervalSeconds"] == 60 and config["spool"] == {"maxMessages": 10000}
    assert config["statsPeriodSeconds"] == 1800
    assert config["model"] == {"component": MODEL_COMPONENT, "version": ""}
    access = config["accessControl"]
    assert [(p["operations"], p["resources"]) for p in access["aws.greengrass.ipc.pubsub"].values()] == [
        (["aws.greengrass#SubscribeToTopic"], ["turbines/{iot:thingName}/sensors",
                                               "turbines/{iot:thingName}/sensors/health"])]
    assert [(p["operations"], p["resources"]) for p in access["aws.greengrass.ipc.mqttproxy"].values()] == [
        (["aws.greengrass#PublishToIoTCore"], ["turbines/{iot:thingName}/anomalies",
                                               "turbines/{iot:thingName}/health",
                                               "turbines/{iot:thingName}/stats"])]
    assert set(access) == {"aws.greengrass.ipc.pubsub", "aws.greengrass.ipc.mqttproxy"}
    lifecycle = manifest["Lifecycle"]
    assert lifecycle["Install"]["RequiresPrivilege"] is False and lifecycle["Run"]["RequiresPrivilege"] is False
    assert "{artifacts:decompressedPath}/detector/install_venv.py" in lifecycle["Install"]["Script"]
    assert "--wheels '{artifacts:path}'" in lifecycle["Install"]["Script"]
    assert "{artifacts:decompressedPath}/detector/main.py' --thing '{iot:thingName}'" in lifecycle["Run"]["Script"]

    again = build(tmp_path / "again", wheelhouse, bucket="my-bucket", component_dir=component)
    assert (again.directory / DETECTOR_ZIP).read_bytes() == (built.directory / DETECTOR_ZIP).read_bytes()
    assert again.recipe == built.recipe


def test_build_needs_wheels_and_a_valid_version(component: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="make wheelhouse"):
        build(tmp_path / "build", tmp_path / "nowhere", component_dir=component)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "x-1-py3-none-any.whl").write_bytes(b"x")
    (component / "VERSION").write_text("1.0\n")
    with pytest.raises(ConfigurationError, match=r"VERSION: version must be MAJOR\.MINOR\.PATCH"):
        build(tmp_path / "build", tmp_path / "w", component_dir=component)


# ------------------------------------------------------------------ publish
def test_publish_is_idempotent_and_refuses_changes_without_a_version_bump(component: Path, wheelhouse: Path,
                                                                          tmp_path: Path) -> None:
    built = build(tmp_path / "build", wheelhouse, component_dir=component)
    store = FsObjectStore(tmp_path / "objects", "data-bucket")
    prefix = detector_prefix(built.version)
    written = publish(store, built.directory)
    assert written == [prefix + n for n in ("detector.zip", "wheels/awscrt-9.9-py3-none-any.whl",
                                            "wheels/numpy-9.9-py3-none-any.whl", "recipe.json")]
    recipe = json.loads(store.get(prefix + RECIPE_FILE))
    digests = artifact_digests(recipe)
    assert digests[store.uri(prefix + DETECTOR_ZIP)] == artifact_digest(store.get(prefix + DETECTOR_ZIP))
    assert all(uri.startswith("s3://data-bucket/") for uri in digests)
    assert publish(store, built.directory) == []  # same bytes: nothing to do

    (component / "src" / "detector" / "messages.py").write_text("# changed\n", encoding="utf-8")
    changed = build(tmp_path / "build", wheelhouse, component_dir=component)
    with pytest.raises(Conflict, match="changed without bumping VERSION"):
        publish(store, changed.directory)
    assert json.loads(store.get(prefix + RECIPE_FILE)) == recipe  # nothing overwritten


# ------------------------------------------------------------------ install_venv.py
def _fake_python(tmp_path: Path, delay: float = 0.0) -> Path:
    """A stand-in interpreter: `-m venv <dir>` makes <dir>/bin/python, which logs each `-m pip` call."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "fake-python"
    fake.write_text(f"""#!/bin/bash
set -e
echo "$$ $*" >> {log}
if [ "$1 $2" = "-m venv" ]; then
  sleep {delay}
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
fi
""")
    fake.chmod(0o755)
    return fake


def _install(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(INSTALLER), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, cwd=tmp_path)


def test_install_venv_builds_once_per_requirements_hash_even_when_devices_race(tmp_path: Path) -> None:
    sys.path.insert(0, str(INSTALLER.parent))
    try:
        import install_venv
    finally:
        sys.path.remove(str(INSTALLER.parent))
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy==1\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake = _fake_python(tmp_path, delay=0.5)
    root = tmp_path / "venvs"
    expected = root / hashlib.sha256(reqs.read_bytes()).hexdigest()[:16]

    # two "devices" at once: one builds, the other waits on the lock and reuses
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import install_venv as m; from pathlib import Path; "
            "print(m.ensure_venv(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(INSTALLER.parent), str(root), str(reqs),
                               str(wheels), str(fake)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=30)[0].strip() for p in procs]
    assert outs == [str(expected)] * 2
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert sum(" -m venv " in c for c in calls) == 1
    assert sum("-m pip install" in c and "--no-index" in c and f"--find-links {wheels}" in c for c in calls) == 1
    assert (expected / install_venv.MARKER).is_file()

    # an interrupted install (no marker) is rebuilt; a complete one is reused without running anything
    (expected / install_venv.MARKER).unlink()
    (expected / "leftover").write_text("half-installed")
    assert install_venv.ensure_venv(root, reqs, wheels, str(fake)) == expected
    assert not (expected / "leftover").exists()
    n = len((tmp_path / "calls.log").read_text().splitlines())
    assert install_venv.ensure_venv(root, reqs, wheels, str(fake)) == expected
    assert len((tmp_path / "calls.log").read_text().splitlines()) == n

    reqs.write_text("numpy==2\n")  # other requirements: another venv
    assert install_venv.ensure_venv(root, reqs, wheels, str(fake)) != expected


def test_install_venv_cli_chooses_the_root_and_records_the_path(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("x\n")
    (tmp_path / "wheels").mkdir()
    h = hashlib.sha256(b"x\n").hexdigest()[:16]
    done = tmp_path / "configured" / h
    done.mkdir(parents=True)
    (done / ".nacelle-complete").write_text(h)
    common = ["--requirements", str(reqs), "--wheels", str(tmp_path / "wheels"),
              "--default-venvs-root", str(tmp_path / "default"), "--record", str(tmp_path / "work" / "venv")]
    proc = _install(tmp_path, *common, "--venvs-root", str(tmp_path / "configured"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(done)
    assert (tmp_path / "work" / "venv").read_text().strip() == str(done)
    # empty configuration: the environment's root
    proc = _install(tmp_path, *common, "--venvs-root", "", env={"NACELLE_VENVS_ROOT": str(tmp_path / "configured")})
    assert proc.stdout.strip() == str(done)
    missing = _install(tmp_path, "--requirements", str(reqs), "--wheels", str(tmp_path / "nowhere"),
                       "--default-venvs-root", str(tmp_path / "default"))
    assert missing.returncode == 1
    assert "nowhere: the wheels directory does not exist" in missing.stderr


@pytest.mark.slow
@pytest.mark.skipif(not any(WHEELHOUSE.glob("*.whl")), reason="no wheelhouse (make wheelhouse)")
def test_recipe_lifecycle_installs_a_real_venv_and_runs_main(component: Path, tmp_path: Path) -> None:
    """The rendered Install and Run scripts alone, laid out like Greengrass, with the real wheelhouse (< 60 s)."""
    start = time.monotonic()
    (component / "src" / "main.py").write_text(  # a probe in place of the detector's entry point
        "import sys, detector.messages, detector.pipeline, detector.scoring, shared.ml.spec, onnxruntime, awsiot\n"
        "print('probe', sys.prefix, ' '.join(sys.argv[1:]))\n")
    built = build(tmp_path / "build", WHEELHOUSE, component_dir=component)
    artifacts = tmp_path / "gg" / "artifacts"  # {artifacts:path}: every artifact, flat
    unarchived = tmp_path / "gg" / "unarchived"  # {artifacts:decompressedPath}
    artifacts.mkdir(parents=True)
    for path in [built.directory / DETECTOR_ZIP, *(built.directory / "wheels").glob("*.whl")]:
        shutil.copy(path, artifacts / path.name)
    with zipfile.ZipFile(artifacts / DETECTOR_ZIP) as zf:
        zf.extractall(unarchived / "detector")
    values = {"{artifacts:path}": str(artifacts), "{artifacts:decompressedPath}": str(unarchived),
              "{work:path}": str(tmp_path / "gg" / "work"), "{configuration:/venvRoot}": "",
              "{iot:thingName}": "turbine-01", "{kernel:rootPath}": str(tmp_path / "gg")}

    def script(step: str) -> str:
        text = str(built.recipe["Manifests"][0]["Lifecycle"][step]["Script"])
        for var, value in values.items():
            text = text.replace(var, value)
        assert "{" not in text, text
        return text

    (tmp_path / "gg" / "work").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NACELLE_VENVS_ROOT"}
    install = subprocess.run(["bash", "-c", script("Install")], capture_output=True, text=True, timeout=60, env=env)
    assert install.returncode == 0, install.stderr
    venv = tmp_path / "gg" / "work" / "venvs" / hashlib.sha256(
        (component / "requirements.txt").read_bytes()).hexdigest()[:16]
    assert install.stdout.strip() == str(venv)
    run = subprocess.run(["bash", "-c", script("Run")], capture_output=True, text=True, timeout=60, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["probe", str(venv), "--thing", "turbine-01", "--models-root",
                                  str(tmp_path / "gg" / "packages" / "artifacts-unarchived")]
    assert time.monotonic() - start < 60


def test_upload_code_publishes_the_detector_component_to_the_stack_bucket(tmp_path: Path, monkeypatch) -> None:
    """`make deploy` -> `nacelle aws upload-code`: the recipe compilation_completed reads lands in S3, idempotently."""
    import boto3
    from moto import mock_aws

    from nacelle.aws_tools import publish_detector
    from nacelle.components import WHEELHOUSE

    if not any(WHEELHOUSE.glob("*.whl")):
        pytest.skip("no wheelhouse (make wheelhouse)")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket="stack-data", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        written = publish_detector("stack-data", tmp_path, "eu-west-1", s3)
        recipe_key = next(k for k in written if k.endswith("recipe.json"))
        recipe = json.loads(s3.get_object(Bucket="stack-data", Key=recipe_key)["Body"].read())
        uris = [a["Uri"] for a in recipe["Manifests"][0]["Artifacts"]]
        assert uris and all(u.startswith("s3://stack-data/components/nacelle.detector/") for u in uris)
        assert publish_detector("stack-data", tmp_path, "eu-west-1", s3) == []  # nothing changed: nothing written
