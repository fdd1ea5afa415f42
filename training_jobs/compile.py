"""Compile job: model.tar.gz -> edge bundle (`model.onnx`, then `manifest.json` last).

`python -m training_jobs.compile --model model.tar.gz --out DIR [--validation DIR] ...` runs it
locally; with no --model it follows the SageMaker Processing contract: inputs under
<root>/input/{model,validation}, output to <root>/output, root /opt/ml/processing (or
$NACELLE_PROCESSING_ROOT). On error it writes a short reason to <output>/failure and exits 1.

The compile fails (BundleError) when ONNX Runtime and PyTorch disagree beyond the tolerance on the
validation windows (sensor files when given, else windows synthesised from the bundle's
normalisation statistics), always with NaN-block variants of those windows added, or when either
scores a window without missing samples as NaN.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.errors import BundleError, ConfigurationError, DataError, NacelleError
from shared.ml.bundle import MANIFEST_FILE, Manifest
from shared.ml.dataset import data_files, load_dataset, series_windows
from shared.ml.edge_bundle import EDGE_FORMAT_VERSION, MODEL_FILE, EdgeManifest, sha256_file, verify
from shared.version import code_version
from training_jobs.bundle_io import load_model
from training_jobs.model import Scorer, torch_threads
from training_jobs.onnx_export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAMES,
    export_onnx,
    exporter_info,
    graph_io,
    graph_opset,
    ort_session,
)

PROCESSING_ROOT_ENV = "NACELLE_PROCESSING_ROOT"
DEFAULT_PROCESSING_ROOT = Path("/opt/ml/processing")
FAILURE_FILE = "failure"
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
MAX_WINDOWS = 8192  # validation windows compared (evenly subsampled beyond this)
NAN_BASES = 64  # windows copied into each NaN pattern
SYNTHETIC_SCALES = (0.5, 1.0, 2.0, 4.0)  # mean ± k·std Gaussian windows, one group per k
SYNTHETIC_PER_SCALE = 64
BATCH = 1024


def log(line: str) -> None:
    print(line, flush=True)


# -- windows ---------------------------------------------------------------------------------------
def synthetic_windows(manifest: Manifest, rng: np.random.Generator) -> np.ndarray:
    """Gaussian windows around the training mean with k·std spread, k in SYNTHETIC_SCALES."""
    f, length = manifest.spec.n_features, manifest.spec.geometry.width
    mean, std = manifest.mean.reshape(1, f, 1), manifest.std.reshape(1, f, 1)
    groups = [mean + k * std * rng.standard_normal((SYNTHETIC_PER_SCALE, f, length))
              for k in SYNTHETIC_SCALES]
    return np.concatenate(groups).astype(np.float32)


def nan_variants(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copies of `base` with missing samples: a block in one feature, a whole feature, scattered
    samples (~20 %), and one entirely missing window (the graph must give error 0, missing 1)."""
    w, f, length = base.shape
    block, feature, scattered = base.copy(), base.copy(), base.copy()
    for i in range(w):
        start = int(rng.integers(0, length // 2))
        block[i, int(rng.integers(0, f)), start:start + int(rng.integers(1, length // 2 + 1))] = np.nan
        feature[i, int(rng.integers(0, f)), :] = np.nan
    scattered[rng.random(scattered.shape) < 0.2] = np.nan
    empty = np.full((1, f, length), np.nan, dtype=np.float32)
    return np.concatenate([block, feature, scattered, empty])


def validation_windows(manifest: Manifest, validation: Path | None, seed: int = 0,
                       limit: int = MAX_WINDOWS) -> tuple[np.ndarray, str]:
    """(windows, source): the validation files' windows, or synthetic ones; plus NaN variants."""
    rng = np.random.default_rng(seed)
    spec = manifest.spec
    if validation is not None:
        chunks = [series_windows(s, spec).x for s in load_dataset([validation], spec)]
        x = np.concatenate(chunks) if chunks else np.zeros((0, spec.n_features, spec.geometry.width), np.float32)
        if len(x) == 0:
            raise DataError(f"{validation}: the validation data gives no {spec.geometry.length}-sample windows")
        if len(x) > limit:
            x = x[np.linspace(0, len(x) - 1, limit).astype(np.int64)]
        source = "validation"
    else:
        x, source = synthetic_windows(manifest, rng), "synthetic"
    bases = x[np.linspace(0, len(x) - 1, min(NAN_BASES, len(x))).astype(np.int64)]
    return np.ascontiguousarray(np.concatenate([x, nan_variants(bases, rng)]), dtype=np.float32), source


# -- equivalence -----------------------------------------------------------------------------------
def run_torch(scoring: Scorer, x: np.ndarray) -> dict[str, np.ndarray]:
    scoring.eval()
    outs: list[tuple[np.ndarray, ...]] = []
    with torch.no_grad():
        for i in range(0, len(x), BATCH):
            outs.append(tuple(o.numpy() for o in scoring(torch.from_numpy(x[i:i + BATCH]))))
    return {name: np.concatenate([o[k] for o in outs]) for k, name in enumerate(OUTPUT_NAMES)}


def run_onnx(session: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    outs = [session.run(list(OUTPUT_NAMES), {INPUT_NAME: x[i:i + BATCH]}) for i in range(0, len(x), BATCH)]
    return {name: np.concatenate([o[k] for o in outs]) for k, name in enumerate(OUTPUT_NAMES)}


def _differences(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    """Max abs diff; max rel diff over elements where torch is non-zero; NaN equals NaN."""
    got, want = got.astype(np.float64), want.astype(np.float64)
    both_nan = np.isnan(got) & np.isnan(want)
    diff = np.where(both_nan, 0.0, np.abs(got - want))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only
    nonzero = np.abs(want) > 0
    rel = diff[nonzero] / np.abs(want[nonzero])
    ok = np.isclose(got, want, atol=atol, rtol=rtol, equal_nan=True)
    return {"max_abs_diff": float(diff.max(initial=0.0)), "max_rel_diff": float(rel.max(initial=0.0)),
            "beyond_tolerance": int((~ok).sum())}


def check_finite_scores(onnx_path: Path, x: np.ndarray, torch_score: np.ndarray, onnx_score: np.ndarray) -> None:
    """BundleError when a window without missing samples scores NaN in either runtime.

    The equivalence check counts NaN as equal to NaN, so a model whose weights are damaged (or whose
    training diverged) would otherwise pass and never flag anything on the edge. An infinite score is
    left alone: a wild but finite reading in a sensor file may overflow float32 honestly."""
    observed = np.isfinite(x).all(axis=(1, 2))  # readers turn an infinite reading into a missing one
    bad = observed & (np.isnan(torch_score) | np.isnan(onnx_score))
    if bad.any():
        raise BundleError(f"{onnx_path}: the model scores {int(bad.sum())} of {int(observed.sum())} windows "
                          f"without missing samples as NaN (PyTorch: {int((observed & np.isnan(torch_score)).sum())}, "
                          f"ONNX Runtime: {int((observed & np.isnan(onnx_score)).sum())}): its weights may be "
                          f"damaged or its training diverged")


def check_equivalence(onnx_path: Path, scoring: Scorer, x: np.ndarray, threshold: float,
                      atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> dict[str, Any]:
    """Compare ONNX Runtime (CPU, 1 thread) with torch on `x`; BundleError beyond the tolerance
    (per element: |onnx - torch| <= atol + rtol * |torch|, numpy.isclose) or on a non-finite score
    (check_finite_scores)."""
    onnx_out = run_onnx(ort_session(onnx_path), x)
    torch_out = run_torch(scoring, x)
    check_finite_scores(onnx_path, x, torch_out["score"], onnx_out["score"])
    outputs = {name: _differences(onnx_out[name], torch_out[name], atol, rtol) for name in OUTPUT_NAMES}
    # A window is flagged when its score exceeds the threshold. A flip within tolerance is a window
    # sitting on the threshold; it is reported, and fails the check only through the tolerance.
    onnx_flags, torch_flags = onnx_out["score"] > threshold, torch_out["score"] > threshold
    report: dict[str, Any] = {
        "windows": len(x), "nan_windows": int(np.isnan(x).any(axis=(1, 2)).sum()),
        "atol": atol, "rtol": rtol, "outputs": outputs,
        "flags": {"agree": bool(np.array_equal(onnx_flags, torch_flags)),
                  "mismatches": int((onnx_flags != torch_flags).sum()),
                  "flagged_windows_torch": int(torch_flags.sum()), "flagged_windows_onnx": int(onnx_flags.sum())},
    }
    report["passed"] = all(o["beyond_tolerance"] == 0 for o in outputs.values())
    if not report["passed"]:
        detail = "; ".join(f"{name}: {o['beyond_tolerance']} value(s) beyond tolerance, max abs diff "
                           f"{o['max_abs_diff']:.3g}, max rel diff {o['max_rel_diff']:.3g}"
                           for name, o in outputs.items())
        raise BundleError(f"{onnx_path}: ONNX Runtime and PyTorch disagree on {len(x)} windows "
                          f"(atol {atol:g}, rtol {rtol:g}): {detail}")
    return report


# -- latency ---------------------------------------------------------------------------------------
def _stats(ns: list[int]) -> dict[str, float]:
    us = np.asarray(ns, dtype=np.float64) / 1000.0
    return {"p50_us": round(float(np.percentile(us, 50)), 2), "p99_us": round(float(np.percentile(us, 99)), 2),
            "mean_us": round(float(us.mean()), 2)}


def measure_latency(onnx_path: Path, scoring: Scorer, window: np.ndarray, warmup: int = 50,
                    runs: int = 300) -> dict[str, Any]:
    """Batch-1 latency on one thread after a warm-up: ONNX Runtime, and torch eager for comparison.
    Measured on the compile host, not on the device."""
    x = np.ascontiguousarray(window.reshape(1, *window.shape), dtype=np.float32)
    session = ort_session(onnx_path)
    feed = {INPUT_NAME: x}

    def time_ort() -> int:
        start = time.perf_counter_ns()
        session.run(None, feed)
        return time.perf_counter_ns() - start

    with torch_threads(1):
        tx = torch.from_numpy(x)
        scoring.eval()

        def time_torch() -> int:
            start = time.perf_counter_ns()
            with torch.no_grad():
                scoring(tx)
            return time.perf_counter_ns() - start

        results = {}
        for name, fn in (("onnxruntime", time_ort), ("torch_eager", time_torch)):
            for _ in range(warmup):
                fn()
            results[name] = _stats([fn() for _ in range(runs)])
    import onnxruntime

    return {**results, "batch": 1, "threads": 1, "warmup": warmup, "runs": runs,
            "provider": "CPUExecutionProvider", "onnxruntime_version": onnxruntime.__version__,
            "torch_version": torch.__version__, "machine": platform.machine()}


# -- the job ---------------------------------------------------------------------------------------
def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def compile_bundle(model_archive: Path, out: Path, validation: Path | None, model_version: int | None,
                   atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, *, model_data: str | None = None,
                   opset: int = DEFAULT_OPSET, warmup: int = 50, runs: int = 300) -> dict[str, Any]:
    """Write `out/model.onnx` then `out/manifest.json`; return the edge manifest.

    `model_data` is the archive's URI to record (defaults to its path).
    """
    if not (atol >= 0 and rtol >= 0):
        raise ConfigurationError(f"atol and rtol must be non-negative, got {atol}, {rtol}")
    out.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST_FILE, MODEL_FILE, FAILURE_FILE):  # manifest.json first: it means "complete"
        (out / stale).unlink(missing_ok=True)
    try:
        return _compile(model_archive, out, validation, model_version, atol, rtol, model_data, opset, warmup, runs)
    except BaseException:
        (out / MODEL_FILE).unlink(missing_ok=True)  # a failed compile leaves no model behind
        raise


def _compile(model_archive: Path, out: Path, validation: Path | None, model_version: int | None, atol: float,
             rtol: float, model_data: str | None, opset: int, warmup: int, runs: int) -> dict[str, Any]:
    if not model_archive.is_file():
        raise BundleError(f"{model_archive}: no such model archive (expected model.tar.gz)")
    archive_sha = sha256_file(model_archive)
    loaded = load_model(model_archive)
    manifest, scoring = loaded.manifest, loaded.scorer
    n_features, length = manifest.spec.n_features, manifest.spec.geometry.width
    log(f"model {model_archive} ({archive_sha[:12]}): {manifest.family}, "
        f"{n_features} features x {length} samples")

    onnx_path = out / MODEL_FILE
    export_onnx(scoring, n_features, length, onnx_path, opset)
    x, source = validation_windows(manifest, validation)
    log(f"equivalence on {len(x)} {source} windows (atol {atol:g}, rtol {rtol:g})")
    equivalence = {"source": source, "validation": str(validation) if validation else None,
                   **check_equivalence(onnx_path, scoring, x, manifest.threshold, atol, rtol)}
    for name, o in equivalence["outputs"].items():
        log(f"equivalence_{name}_max_abs_diff={o['max_abs_diff']:.3g}")
    latency = measure_latency(onnx_path, scoring, x[0], warmup, runs)
    for name in ("onnxruntime", "torch_eager"):
        log(f"latency_{name}_p50_us={latency[name]['p50_us']} p99_us={latency[name]['p99_us']}")

    raw = dict(manifest.raw)
    if model_version is not None:
        raw["model_version"] = model_version
    raw["edge"] = {
        "format_version": EDGE_FORMAT_VERSION,
        "artifacts": {MODEL_FILE: {"sha256": sha256_file(onnx_path), "size": onnx_path.stat().st_size}},
        "onnx": {"opset": graph_opset(onnx_path), **graph_io(onnx_path), "exporter": exporter_info()},
        "equivalence": equivalence,
        "latency": latency,
        "source": {"model_data": model_data or str(model_archive), "sha256": archive_sha},
        "compiled_at": datetime.now(UTC).isoformat(),
        "code_version": code_version(),
    }
    checked = EdgeManifest.from_dict(raw, str(out / MANIFEST_FILE))
    _write_atomically(out / MANIFEST_FILE, checked.to_json())
    verify(out)
    log(f"edge bundle written to {out}")
    return raw


# -- entry point -----------------------------------------------------------------------------------
def processing_inputs(root: Path) -> tuple[Path, Path | None]:
    """(model archive, validation dir or None) under a Processing-job root."""
    model_dir = root / "input" / "model"
    archives = sorted(model_dir.rglob("*.tar.gz")) if model_dir.is_dir() else []
    if len(archives) != 1:
        raise BundleError(f"{model_dir}: expected exactly one model.tar.gz, found {len(archives)}")
    validation = root / "input" / "validation"
    has_data = validation.is_dir() and bool(data_files(validation))
    return archives[0], validation if has_data else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training_jobs.compile",
                                     description="Compile a model.tar.gz into an edge bundle.")
    parser.add_argument("--model", type=Path, help="model.tar.gz (omit to use the Processing-job layout)")
    parser.add_argument("--out", type=Path, help="output directory (required with --model)")
    parser.add_argument("--validation", type=Path, help="directory of sensor files for the equivalence check")
    parser.add_argument("--model-version", type=int)
    parser.add_argument("--model-data", help="URI of the model.tar.gz to record (defaults to its path)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL)
    args = parser.parse_args(argv)
    if args.model is not None and args.out is None:
        parser.error("--out is required with --model")
    if args.model is None and (args.out is not None or args.validation is not None):
        parser.error("--out and --validation need --model (without it the Processing layout is used)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model is not None:
        out: Path = args.out
    else:
        root = Path(os.environ.get(PROCESSING_ROOT_ENV, str(DEFAULT_PROCESSING_ROOT)))
        out = root / "output"
    try:
        if args.model is not None:
            model, validation = args.model, args.validation
        else:
            model, validation = processing_inputs(root)
        started = time.perf_counter()
        compile_bundle(model, out, validation, args.model_version, args.atol, args.rtol,
                       model_data=args.model_data)
        log(f"compile_seconds={time.perf_counter() - started:.2f}")
        return 0
    except Exception as exc:  # the contract: a short reason in the failure file, details in the log
        reason = str(exc) if isinstance(exc, NacelleError) else f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / FAILURE_FILE).write_text(reason[:1000])
        except OSError as write_error:
            print(f"cannot write {out / FAILURE_FILE}: {write_error}", file=sys.stderr)
        print(f"compile failed: {reason}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
