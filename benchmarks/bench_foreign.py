"""Detection on data the defaults were not tuned on: three suites, each trained by the real training job
(`python -m training_jobs.train`, defaults only) and judged on held-out data with `nacelle evaluate`'s
metrics.

* plant_1hz: a 1 Hz pump loop (8 channels, two temperatures drifting); many short runs, each trained on
  its first 400 rows and tested on the rest; anomalies of 2-8 minutes; fault-free runs for false alarms.
* scada_10min: ten-minute SCADA of six turbines over a year; one fleet model trained on January to March,
  tested on April to December (seasonal drift); faults over hours to days; two turbines without faults.
* turbine_20hz: the 20 Hz mini-turbine simulator: 3 turbines x 2 h to train, 5 x 6 h with faults and
  3 x 8 h without to test.

Printed per suite: <suite>_event_f1, _point_f1, _point_far and _point_mar (percent; confusion summed over
runs; a sample is flagged when it lies inside an episode, as `nacelle evaluate --points`), the false
alarms per turbine-day on the fault-free data, and the family the job chose (the most frequent one with
several runs). --compare-families also trains each family alone and prints its event F1 and point MAR.
Plus train_seconds_1hz_400_rows: one job on 400 rows at 1 Hz, alone, wall time.

The rule for honesty: the defaults were tuned only on `--seeds dev` and a few other seeds that are not
`eval` (listed in benchmarks/foreign/suites.py); the figures come from `--seeds eval` (the default), whose
data no tuning saw, with one exception the README states (the frozen-sensor check, and its look behind a
difference feature, were written after `eval` misses were seen). The generators were written before any
tuning and not changed to suit a result.

Run alone: `.venv/bin/python -m benchmarks.bench_foreign [--suites a,b] [--workdir DIR] [--jobs 2]`;
`--spec-set episodes.release_ratio=0.6` sets a spec key in every suite's spec (what an option costs and gains).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from benchmarks.foreign.suites import SEEDS, Case, plant_cases, scada_cases
from nacelle.simulator.generate import generate_dataset
from nacelle.train_runner import run_training_job
from shared.ml.metrics import (
    SECONDS_PER_DAY,
    Allowance,
    evaluate_episodes,
    faulty_samples,
    flagged_samples,
    point_summary,
)
from shared.ml.spec import FeatureSpec, parse_spec_text
from training_jobs.bundle_io import read_manifest_from_tar
from training_jobs.evaluation import evaluate_model_on

SUITES = ("plant_1hz", "scada_10min", "turbine_20hz")
FAMILY_CHOICES = ("auto", "pca", "conv1d")


@dataclass
class Tally:
    """Event and point counts summed over the cases of one suite and one family setting."""

    confusion: Counter[str] = field(default_factory=Counter)
    faults: int = 0
    detected: int = 0
    false_alarms: int = 0
    free_false_alarms: int = 0
    free_days: float = 0.0
    families: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        found = self.detected + self.false_alarms  # a detected fault counts once (shared.ml.metrics)
        precision = self.detected / found if found else 0.0
        recall = self.detected / self.faults if self.faults else 0.0
        point = point_summary({k: self.confusion[k] for k in ("tp", "fp", "fn", "tn")})
        return {"event_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                "point_f1": point["f1"], "point_far": 100 * (point["far"] or 0.0),
                "point_mar": 100 * (point["mar"] or 0.0),
                "false_alarms_per_turbine_day": self.free_false_alarms / self.free_days if self.free_days else None,
                "family": self.families.most_common(1)[0][0] if self.families else "none"}


def judge(case: Case, model: Path, tally: Tally, fault_free_units: set[str]) -> None:
    """Add one case's test results: faulty units to the event and point counts, fault-free units (or a
    fault-free case) to the false alarms per turbine-day."""
    _, scored, episodes, faults, detector = evaluate_model_on(model, case.test)
    allowance = Allowance.of(detector.spec)
    tally.families[read_manifest_from_tar(model)["model"]["family"]] += 1
    for s in scored:
        mine = [e for e in episodes if e.turbine_id == s.turbine_id]
        own = [f for f in faults if f.turbine_id == s.turbine_id]
        coverage = {s.turbine_id: (s.t, s.duration_s)}
        metrics = evaluate_episodes(mine, own, coverage, allowance)
        if case.fault_free or s.turbine_id in fault_free_units:
            tally.free_false_alarms += metrics["counts"]["false_alarms"]
            tally.free_days += s.duration_s / SECONDS_PER_DAY
            continue
        predicted, actual = flagged_samples(s.t, mine), faulty_samples(s.t, own)
        tally.confusion.update({"tp": int((predicted & actual).sum()), "fp": int((predicted & ~actual).sum()),
                                "fn": int((~predicted & actual).sum()), "tn": int((~predicted & ~actual).sum())})
        tally.faults += metrics["counts"]["faults"]
        tally.detected += round((metrics["event"] or {}).get("recall", 0.0) * metrics["counts"]["faults"])
        tally.false_alarms += metrics["counts"]["false_alarms"]


def train_case(case: Case, job_dir: Path, family: str, threads: int, extra: dict[str, str] | None = None) -> Path:
    hps: dict[str, Any] = {"threads": threads, **(extra or {})}
    if family != "auto":
        hps["families"] = family
    result = run_training_job(job_dir, f"bench-{case.name}-{family}", {"train": case.train}, hps,
                              spec_file=case.spec, echo=None)
    if not result.ok or result.model_archive is None:
        raise RuntimeError(f"{case.name} ({family}): training failed: {result.failure_reason} ({result.log_file})")
    return result.model_archive


def turbine_cases(root: Path, seeds: tuple[int, int, int]) -> Iterator[Case]:
    train, faulty, healthy = seeds
    generate_dataset(root / "train", 3, 2, "default", train)
    generate_dataset(root / "test", 5, 6, "default", faulty)
    generate_dataset(root / "free", 3, 8, "none", healthy)
    spec = Path(__file__).resolve().parent.parent / "shared" / "specs" / "mini-turbine.yaml"
    yield Case("faulty", root / "train", root / "test", spec, False)
    yield Case("free", root / "train", root / "free", spec, True)


def with_spec_settings(spec: Path, settings: dict[str, str], out: Path) -> Path:
    """The spec with keys set (`context_features=[a]`, dotted for a section's: `episodes.release_ratio=0.6`),
    written as a JSON spec; a setting the spec refuses fails here, before any training."""
    raw = parse_spec_text(spec.read_text(encoding="utf-8"), str(spec)).to_dict()
    for key, value in settings.items():
        if "." not in key:
            raw[key] = yaml.safe_load(value)
            continue
        section, name = key.split(".", 1)
        raw[section] = {**(raw.get(section) or {}), name: yaml.safe_load(value)}
    FeatureSpec.from_dict(raw, f"{spec} with {settings}")
    out.write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return out


def run_suite(suite: str, root: Path, seed_set: str, families: tuple[str, ...], jobs: int,
              extra: dict[str, str] | None = None, spec_settings: dict[str, str] | None = None) -> dict[str, Tally]:
    seed = SEEDS[seed_set][suite]
    if isinstance(seed, tuple):
        cases = list(turbine_cases(root, seed))
    elif suite == "plant_1hz":
        cases = list(plant_cases(root, seed))
    else:
        cases = list(scada_cases(root, seed))
    if spec_settings:  # the cases of a suite share one spec
        spec = with_spec_settings(cases[0].spec, spec_settings, root / "spec-settings.json")
        cases = [replace(c, spec=spec) for c in cases]
    healthy = set((root / "fault_free.txt").read_text().split()) if (root / "fault_free.txt").exists() else set()
    tallies = {family: Tally() for family in families}
    threads = 1 if jobs > 1 else 0

    def one(item: tuple[Case, str]) -> None:
        case, family = item
        job = root / "jobs" / f"{case.name}-{family}"
        trained_on = case.train if suite != "turbine_20hz" else None
        shared = root / "jobs" / f"shared-{family}" / "output" / "model.tar.gz"
        if trained_on is None and shared.exists():  # the 20 Hz cases share one model
            model = shared
        else:
            model = train_case(case, root / "jobs" / f"shared-{family}" if trained_on is None else job, family,
                               threads, extra)
        judge(case, model, tallies[family], healthy)

    items = [(c, f) for f in families for c in cases]
    if suite == "turbine_20hz":  # train once per family, then judge both test sets
        for family in families:
            one((cases[0], family))
        items = [(c, f) for f in families for c in cases[1:]]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for _ in pool.map(one, items):
            pass
    return tallies


def time_400_rows(root: Path) -> float:
    seed = SEEDS["eval"]["plant_1hz"]
    assert isinstance(seed, int)
    case = next(plant_cases(root, seed, faulty=1, fault_free=0))
    started = time.perf_counter()
    train_case(case, root / "job", "auto", 0)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated subset of {SUITES}")
    parser.add_argument("--seeds", choices=sorted(SEEDS), default="eval",
                        help="eval (default): data no tuning saw; dev: the data the defaults were tuned on")
    parser.add_argument("--compare-families", action="store_true",
                        help="also train each family alone and print its figures")
    parser.add_argument("--jobs", type=int, default=2, help="training jobs at once (default 2)")
    parser.add_argument("--workdir", help="keep data and models here (default: a temporary directory)")
    parser.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE",
                        help="hyperparameters for every job (for tuning on --seeds dev)")
    parser.add_argument("--spec-set", nargs="*", default=[], metavar="[SECTION.]KEY=VALUE",
                        help="spec keys set for every suite, e.g. episodes.release_ratio=0.6")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.hp)
    spec_settings = dict(item.split("=", 1) for item in args.spec_set)
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; choose from {SUITES}")
    families = FAMILY_CHOICES if args.compare_families else ("auto",)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        if "plant_1hz" in suites:
            print(f"train_seconds_1hz_400_rows={time_400_rows(root / 'timing'):.1f}", flush=True)
        for suite in suites:
            started = time.perf_counter()
            tallies = run_suite(suite, root / suite, args.seeds, families, args.jobs, extra, spec_settings)
            for family, tally in tallies.items():
                figures = tally.figures()
                prefix = suite if family == "auto" else f"{suite}_{family}"
                for key, value in figures.items():
                    if family != "auto" and key == "family":
                        continue
                    text = value if isinstance(value, str) or value is None else f"{value:.3f}"
                    print(f"{prefix}_{key}={text}", flush=True)
                if family == "auto" and len(tally.families) > 1:
                    print(f"{suite}_families={dict(tally.families)}", flush=True)
            print(f"{suite}_seconds={time.perf_counter() - started:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
