"""Per-window cost of the detector (issue 5), in one run on the same model and data, one core:

- the full path: sensor message received -> episode decision (JSON parsing, features, ONNX Runtime,
  the episode rule), batches of one stride (10 samples = one window per message);
- the same path with the PyTorch eager scoring model instead of ONNX Runtime;
- bare ONNX Runtime calls on pre-built windows (batch 1).

Figures: detector_speedup_vs_torch (goal >= 3), detector_cost_vs_bare_ort (goal <= 2),
detector_p99_ms (goal <= 1). Run alone: `.venv/bin/python -m benchmarks.bench_detector`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nacelle.simulator.generate import generate_dataset
from nacelle.train_runner import run_training_job
from shared.ml.dataset import load_dataset, series_windows
from shared.ml.table import load_file
from training_jobs.bundle_io import load_model
from training_jobs.compile import compile_bundle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "greengrass_components" / "nacelle.detector" / "src"))
from detector.messages import sensor_message
from detector.pipeline import TurbinePipeline
from detector.scoring import EdgeModel

STRIDE_BATCH = 10


@dataclass
class TorchModel:
    """The EdgeModel surface with PyTorch eager scoring (the baseline)."""

    edge: EdgeModel
    scoring: torch.nn.Module

    def __getattr__(self, name: str) -> object:
        return getattr(self.edge, name)

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            errors, missing = self.scoring(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)))
        return errors.numpy(), missing.numpy()


def messages(data: Path, model: EdgeModel) -> list[bytes]:
    spec = model.spec
    (frame,) = load_file(next(data.rglob("*.csv.gz")), spec, turbine_hint="wt-01")[0]
    rows = [{"seq": i, "ts": float(frame.t[i]), **{c: float(frame.values[c][i]) for c in spec.input_columns}}
            for i in range(len(frame.t))]
    return [sensor_message(frame.turbine_id, rows[i:i + STRIDE_BATCH]) for i in range(0, len(rows), STRIDE_BATCH)]


def run_path(model: object, payloads: list[bytes]) -> tuple[float, int, float | None]:
    pipeline = TurbinePipeline("wt-01", model)  # type: ignore[arg-type]
    started = time.perf_counter()
    for payload in payloads:
        pipeline.handle(payload)
    elapsed = time.perf_counter() - started
    return elapsed / max(pipeline.windows_scored, 1), pipeline.windows_scored, pipeline.latency_ms()[1]


def main() -> int:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_dataset(root / "data", 1, 1.0, "default", 11)
        job = run_training_job(root / "job", "bench-detector", {"train": root / "data"},
                               {"epochs": "5", "threads": "1"}, echo=None)
        if job.model_archive is None:
            print(f"training failed: {job.failure_reason}", file=sys.stderr)
            return 1
        compile_bundle(job.model_archive, root / "bundle", None, 1, warmup=5, runs=20)
        edge = EdgeModel.load(root / "bundle")
        payloads = messages(root / "data", edge)

        full_cost, windows, p99_ms = run_path(edge, payloads)
        torch_cost, _, _ = run_path(TorchModel(edge, load_model(job.model_archive).scoring), payloads)

        (series,) = load_dataset([root / "data"], edge.spec)
        x = series_windows(series, edge.spec).x
        started = time.perf_counter()
        for i in range(len(x)):
            edge.score(x[i:i + 1])
        bare_cost = (time.perf_counter() - started) / len(x)

    print(f"detector_windows={windows}")
    print(f"detector_full_path_us={full_cost * 1e6:.1f}")
    print(f"detector_torch_path_us={torch_cost * 1e6:.1f}")
    print(f"detector_bare_ort_us={bare_cost * 1e6:.1f}")
    print(f"detector_speedup_vs_torch={torch_cost / full_cost:.2f}")
    print(f"detector_cost_vs_bare_ort={full_cost / bare_cost:.2f}")
    print(f"detector_p99_ms={p99_ms:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
