"""Shared fixtures for every test folder (tests/ and greengrass_components/): one small dataset and one
small trained model per model family, built once per session."""

from __future__ import annotations

import contextlib
import os
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


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 turbines x 1 h with the default labelled faults (seed 3)."""
    out = tmp_path_factory.mktemp("data") / "small"
    generate_dataset(out, 2, 1.0, "default", 3)
    return out


def _train(tmp_path_factory: pytest.TempPathFactory, data: Path, family: str) -> JobResult:
    job_dir = tmp_path_factory.mktemp("job") / f"small-{family}"
    result = run_training_job(job_dir, f"nacelle-test-{family}", {"train": data},
                              {**SMALL_MODEL_HPS, "families": family, "dataset_hash": "f" * 64}, echo=None)
    assert result.ok, result.log_file.read_text()
    return result


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> JobResult:
    """A small autoencoder trained once per session through the real SageMaker-contract job."""
    return _train(tmp_path_factory, small_dataset, "conv1d")


@pytest.fixture(scope="session")
def trained_pca(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> JobResult:
    """The PCA family on the same data, through the same job."""
    return _train(tmp_path_factory, small_dataset, "pca")
