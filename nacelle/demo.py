"""`make run`: the main job on the local embedded stack.

Generate a labelled dataset, train under the SageMaker contract, evaluate on a separately
generated held-out dataset, and print a readable metrics table and the training report's path.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from nacelle.simulator.generate import generate_dataset

from nacelle.console import metrics_table
from nacelle.jobs import run_training_job
from training_jobs.evaluation import evaluate_model_on


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run_demo(workdir: Path) -> int:
    if workdir.exists():
        shutil.rmtree(workdir)
    started = step("1/4 generating labelled training data: 3 turbines x 2 h, default faults, seed 7")
    train = generate_dataset(workdir / "data" / "train", 3, 2, "default", 7)
    print(f"{len(train.files)} files, {train.rows} rows, {len(train.episodes)} labelled fault episodes "
          f"({time.perf_counter() - started:.1f}s)")

    started = step("2/4 training (SageMaker contract, local subprocess)")
    job = run_training_job(workdir / "job", "demo-train", {"train": workdir / "data" / "train"}, {})
    if not job.ok or job.model_archive is None:
        print(f"FAILED: training: {job.failure_reason} (log {job.log_file})")
        return 1
    print(f"trained in {time.perf_counter() - started:.1f}s -> {job.model_archive}")

    started = step("3/4 generating a separate held-out dataset: 3 turbines x 2 h, seed 8")
    held = generate_dataset(workdir / "data" / "heldout", 3, 2, "default", 8)
    print(f"{len(held.files)} files, {len(held.episodes)} labelled fault episodes")

    step("4/4 evaluating on the held-out data (event-level: detected = an episode opens in [start, end + 60 s])")
    metrics = evaluate_model_on(job.model_archive, workdir / "data" / "heldout")
    print(metrics_table(metrics))
    print(f"\ntraining report: {job.job_dir / 'output' / 'data' / 'report.png'}")
    print(f"model bundle:    {job.model_archive}")
    return 0
