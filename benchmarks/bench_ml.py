"""ML core figures on the 20 Hz simulator, on freshly generated data, one run:

- train_seconds: `nacelle train` on 3 turbines x 2 h (seed 7), wall time, goal <= 60 s on 2 cores;
- event_f1, recall_medium_high: held-out 5 turbines x 6 h with the default faults (seed 8),
  goals >= 0.90 and >= 0.95;
- false_alarms_per_turbine_day: 3 turbines x 8 h without faults (seed 9), goal <= 1.

Run alone: `.venv/bin/python -m benchmarks.bench_ml [--workdir DIR]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from nacelle.simulator.generate import generate_dataset
from nacelle.train_runner import run_training_job
from training_jobs.evaluation import evaluate_model_on


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", help="keep the data and model here (default: a temporary directory)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        generate_dataset(root / "A", 3, 2, "default", 7)
        started = time.perf_counter()
        result = run_training_job(root / "M", "bench-train", {"train": root / "A"}, {}, echo=None)
        train_seconds = time.perf_counter() - started
        if not result.ok or result.model_archive is None:
            print(f"training failed: {result.failure_reason}", file=sys.stderr)
            return 1
        print(f"train_seconds={train_seconds:.1f}", flush=True)

        generate_dataset(root / "heldout", 5, 6, "default", 8)
        held = evaluate_model_on(result.model_archive, root / "heldout")[0]
        event = held["event"]
        severities = event["per_severity"]
        mh = [severities[s] for s in ("medium", "high") if s in severities]
        print(f"event_f1={event['f1']:.3f}")
        print(f"event_precision={event['precision']:.3f}")
        print(f"event_recall={event['recall']:.3f}")
        print(f"recall_medium_high={sum(g['detected'] for g in mh) / sum(g['count'] for g in mh):.3f}")
        print(f"mean_delay_s={event['mean_delay_s']:.1f}")
        for fault, g in event["per_fault"].items():
            print(f"recall_{fault}={g['recall']:.3f}")

        generate_dataset(root / "normal", 3, 8, "none", 9)
        normal = evaluate_model_on(result.model_archive, root / "normal")[0]
        print(f"false_alarms_per_turbine_day={normal['false_alarms_per_turbine_day']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
