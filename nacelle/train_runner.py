"""Run a SageMaker-contract job locally: a job directory laid out like /opt/ml and a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training_jobs.bundle_io import pack_model_dir
from training_jobs.contract import job_environ

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class JobResult:
    job_dir: Path
    returncode: int
    failure_reason: str | None
    model_archive: Path | None
    log_file: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0


BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def job_threads(hyperparameters: Mapping[str, Any]) -> int:
    """The threads a local job computes with: its `threads` hyperparameter, else the cores this process may
    run on (its CPU affinity, not the machine's count: oversubscribed threads slow training many times)."""
    try:
        requested = int(hyperparameters.get("threads") or 0)
    except (TypeError, ValueError):  # the job itself refuses it, naming the hyperparameter
        requested = 0
    return requested if requested > 0 else available_cores()


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_training_job(job_dir: Path, job_name: str, channels: Mapping[str, Path],
                     hyperparameters: Mapping[str, Any], spec_file: Path | None = None,
                     echo: Callable[[str], None] | None = print,
                     extra_env: Mapping[str, str] | None = None) -> JobResult:
    """Train in `job_dir` exactly as SageMaker would run `python -m training_jobs.train`."""
    job_dir = Path(job_dir).resolve()  # the job runs with its directory as cwd: no path may stay relative
    job_dir.mkdir(parents=True, exist_ok=True)
    channels = {name: Path(path).resolve() for name, path in channels.items()}
    if spec_file is not None:
        spec_dir = job_dir / "input" / "data" / "spec"
        spec_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(spec_file, spec_dir / spec_file.name)
        channels["spec"] = spec_dir
    env = {**os.environ, **job_environ(job_dir, job_name, channels, hyperparameters), **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    for name in BLAS_THREAD_VARIABLES:  # numpy's BLAS and torch's OpenMP: no more threads than cores given
        env.setdefault(name, str(job_threads(hyperparameters)))
    # Idle OpenMP threads sleep instead of spinning: on cores shared with other work, spinning threads wait
    # for each other's time slices (a 30 s training measured at 510 s beside a busy test run; 34 s with this).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    log_file = job_dir / "output" / "train.log"
    failure = job_dir / "output" / "failure"
    failure.unlink(missing_ok=True)
    with log_file.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "training_jobs.train"], env=env, cwd=job_dir,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if echo is not None:
                echo(line.rstrip("\n"))
        returncode = proc.wait()
    if returncode != 0:
        reason = failure.read_text().strip() if failure.is_file() else f"exit code {returncode}"
        return JobResult(job_dir, returncode, reason, None, log_file)
    archive = pack_model_dir(job_dir / "model", job_dir / "output" / "model.tar.gz")
    return JobResult(job_dir, 0, None, archive, log_file)
