"""`make run`: the main job on the local embedded stack.

Starts the stack, generates a labelled dataset and drops it in the raw area; validation, training,
evaluation and registration follow by themselves. Then the registered model is evaluated on a
separately generated held-out dataset. Exits non-zero naming the step that failed.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from nacelle.commands import upload_keys
from nacelle.console import metrics_table, table
from nacelle.local.stack import Stack
from nacelle.local.up import background_stack, wait_for
from nacelle.simulator.generate import generate_dataset
from shared.errors import NacelleError
from shared.ml.edge_bundle import verify
from shared.ports import ModelVersion
from shared.usecases import state_keys as sk
from training_jobs.evaluation import evaluate_model_on


class Step:
    def __init__(self) -> None:
        self.name = ""
        self.started = time.perf_counter()

    def __call__(self, name: str) -> None:
        self.name, self.started = name, time.perf_counter()
        print(f"\n== {name}", flush=True)

    def done(self, what: str = "done") -> None:
        print(f"   {what} ({time.perf_counter() - self.started:.1f}s)", flush=True)


def run_demo(home: Path) -> int:
    step = Step()
    try:
        return _run(home, step)
    except (NacelleError, OSError) as exc:
        print(f"\nFAILED at step '{step.name}': {exc}", flush=True)
        return 1


def _run(home: Path, step: Step) -> int:
    if home.exists():
        shutil.rmtree(home)
    generated = home / "generated"
    step("1. generate labelled training data: 3 turbines x 2 h, default fault schedule, seed 7")
    data = generate_dataset(generated / "train", 3, 2.0, "default", 7)
    step.done(f"{len(data.files)} files, {data.rows} rows, {len(data.episodes)} labelled fault episodes")

    step("2. start the local stack")
    with background_stack(home) as stack:
        step.done(f"data dir {home}")
        step("3. drop the data in the raw area (equivalent: nacelle data put " f"{generated / 'train'})")
        for path, key in upload_keys([generated / "train"]):
            stack.store.put_if_absent(key, path.read_bytes())
        step.done()
        step("4. validation, debounced retraining policy, training, quality gate, registration (automatic)")
        version = _follow(stack)
        step.done(f"version {version.version} is {version.status}")
        _show_version(stack, version)
        if version.status == "PendingManualApproval":
            step(f"5. approve it as an operator would (equivalent: nacelle models approve {version.version}); "
                 "the edge compile follows by itself")
            stack.registry.set_status(version.group, version.version, "Approved", "demo approval", "make-run")
            _show_bundle(stack, version)
    step("6. evaluate the registered model on a separately generated held-out dataset (3 turbines x 2 h, seed 8)")
    generate_dataset(generated / "heldout", 3, 2.0, "default", 8)
    metrics = evaluate_model_on(stack.store.path(version.model_data_key), generated / "heldout")
    print(metrics_table(metrics))
    step.done()
    job = version.metadata.get("nacelle:job", "")
    print(f"\ntraining report: {stack.paths.jobs_dir / job / 'output' / 'data' / 'report.png'}")
    print(f"inspect:         .venv/bin/nacelle --data-dir {home} models show {version.version}")
    print(f"                 .venv/bin/nacelle --data-dir {home} jobs logs {job}")
    return 0


def _follow(stack: Stack) -> ModelVersion:
    """Print the chain's progress until a model version is registered."""
    group = stack.settings.group
    seen: set[str] = set()

    def progress() -> ModelVersion | None:
        pk = sk.group_pk(group)
        files = stack.state.query(pk, sk.FILE)
        accepted = sum(1 for f in files if f.get("status") == "accepted")
        lines = [f"{accepted} file(s) accepted, {len(files) - accepted} quarantined"]
        for job in stack.jobs.list():
            lines.append(f"training job {job.name}: {job.status}")
        for line in lines:
            if line not in seen:
                seen.add(line)
                print(f"   {line}", flush=True)
        failed = [j for j in stack.jobs.list() if j.status == "Failed"]
        if failed:
            raise NacelleError(f"training job {failed[0].name} failed: {failed[0].failure_reason}")
        versions = stack.registry.list(group)
        return versions[-1] if versions else None

    return wait_for(progress, 300, "a registered model version", interval_s=0.5)


def _show_bundle(stack: Stack, v: ModelVersion) -> None:
    """Wait for the verified edge bundle and summarise its equivalence check and latency."""
    manifest_key = f"compiled/{v.group}/{v.version}/manifest.json"

    def compiled() -> bool:
        failed = [j for j in stack.jobs.list() if j.kind == "compile" and j.status == "Failed"]
        if failed:
            raise NacelleError(f"compile job {failed[0].name} failed: {failed[0].failure_reason}")
        return stack.store.exists(manifest_key)

    wait_for(compiled, 300, manifest_key)
    bundle = verify(stack.store.path(manifest_key).parent)
    equivalence, latency = bundle.edge["equivalence"], bundle.edge["latency"]
    print(f"   {manifest_key}: digests verified; ONNX vs PyTorch on {equivalence['windows']} windows: "
          f"max abs diff {equivalence['outputs']['error']['max_abs_diff']:.2e}, passed={equivalence['passed']}")
    ort, eager = latency["onnxruntime"], latency["torch_eager"]
    print(f"   batch-1 latency, one thread: ONNX Runtime p50 {ort['p50_us']:.0f} us, "
          f"PyTorch eager p50 {eager['p50_us']:.0f} us")


def _show_version(stack: Stack, v: ModelVersion) -> None:
    rows = [[k.removeprefix("metric:"), val] for k, val in sorted(v.metadata.items()) if k.startswith("metric:")]
    print(table(["metric (held-out slice of the training data)", "value"], rows))
    print(f"   {v.description}")
    print(f"   approve it with: .venv/bin/nacelle --data-dir {stack.paths.home} models approve {v.version}")
