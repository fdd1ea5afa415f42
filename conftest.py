"""Shared fixtures for every test folder (tests/ and greengrass_components/): one small dataset and one
small trained model per model family, built once per test run (the first xdist worker to need one builds
it, the others wait for it and read it: the tests only read them)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nacelle.simulator.generate import generate_dataset
from nacelle.train_runner import JobResult, run_training_job

SMALL_MODEL_HPS = {"epochs": 4, "max_train_windows": 6000, "patience": 2, "seed": 1}


def _processes_under(root: Path) -> list[tuple[int, str]]:
    """Live processes whose command line names a path under `root` (Linux /proc)."""
    found, needle = [], str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests leave no process behind: anything still running from the session's temp tree at the end
    (a broker, a device, a job) is killed and fails the run."""
    root = tmp_path_factory.getbasetemp()
    yield
    if not Path("/proc").is_dir():
        return
    deadline = time.monotonic() + 10.0  # a job runner that reported its end may still be exiting
    while (left := _processes_under(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, "processes left behind by the tests: " + "; ".join(f"{pid}: {cmd}" for pid, cmd in left)


@contextlib.contextmanager
def _built_once(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, bool]]:
    """(directory, whether to build it): one directory per test run, shared by its xdist workers; the
    caller builds into it under an exclusive lock, and the others find it complete."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's own temp directory, above each worker's
    target = root / f"shared-{name}"
    with (root / f"shared-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if a build fails
        if (root / f"shared-{name}.done").exists():
            yield target, False
            return
        shutil.rmtree(target, ignore_errors=True)  # what a failed build left
        yield target, True
        (root / f"shared-{name}.done").touch()


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 turbines x 1 h with the default labelled faults (seed 3)."""
    with _built_once(tmp_path_factory, "data") as (out, build):
        if build:
            generate_dataset(out, 2, 1.0, "default", 3)
    return out


def _train(tmp_path_factory: pytest.TempPathFactory, data: Path, family: str) -> JobResult:
    with _built_once(tmp_path_factory, f"job-{family}") as (job_dir, build):
        if build:
            result = run_training_job(job_dir, f"nacelle-test-{family}", {"train": data},
                                      {**SMALL_MODEL_HPS, "families": family, "dataset_hash": "f" * 64}, echo=None)
            assert result.ok, result.log_file.read_text()  # a failed build is not marked done
            return result
    return JobResult(job_dir, 0, None, job_dir / "output" / "model.tar.gz", job_dir / "output" / "train.log")


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> JobResult:
    """A small autoencoder trained once per session through the real SageMaker-contract job."""
    return _train(tmp_path_factory, small_dataset, "conv1d")


@pytest.fixture(scope="session")
def trained_pca(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> JobResult:
    """The PCA family on the same data, through the same job."""
    return _train(tmp_path_factory, small_dataset, "pca")
