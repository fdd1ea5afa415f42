"""Export a whole scorer (any family) to ONNX and open it with ONNX Runtime the way the device does.

The graph holds the drift baseline, standardisation, NaN handling (IsNaN/Where), the family's math and
the one score with its per-feature contributions, so the device keeps no second copy of that math.
We use the legacy TorchScript exporter (`dynamo=False`): it is the default and mature path in the
training container's torch 2.5, emits opset 17 natively (the dynamo exporter builds opset 18 and
down-converts) and needs no onnxscript.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from shared.errors import BundleError
from training_jobs.model import Scorer

INPUT_NAME = "windows"
OUTPUT_NAMES = ("score", "contributions", "missing")
BATCH_AXIS = "batch"
DEFAULT_OPSET = 17
# Newer torch flags the legacy exporter as deprecated; torch 2.5 (the container) does not.
_DEPRECATION_NOTES = r"(?s).*(legacy TorchScript-based ONNX export|feature will be removed)"


def exporter_info() -> dict[str, Any]:
    return {"name": "torch.onnx.export", "dynamo": False, "torch": torch.__version__, "onnx": onnx.__version__}


def export_onnx(scoring: Scorer, n_features: int, length: int, path: Path,
                opset: int = DEFAULT_OPSET) -> None:
    """Write `path`: input "windows" [batch, F, W] (W: sampled context + scored samples) -> outputs "score" [batch],
    "contributions" and "missing" [batch, F]."""
    scoring.eval()  # dropout off: the graph must be the scoring path, not the training one
    example = torch.zeros(2, n_features, length, dtype=torch.float32)
    example[0, 0, : length // 2] = float("nan")  # trace with NaN present (the math is data-independent)
    axes = {name: {0: BATCH_AXIS} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DEPRECATION_NOTES)
            torch.onnx.export(scoring, (example,), os.fspath(partial), dynamo=False, export_params=True,
                              opset_version=opset, do_constant_folding=True, input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES), dynamic_axes=axes)
        onnx.checker.check_model(os.fspath(partial), full_check=True)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise BundleError(f"{path}: ONNX export failed: {type(exc).__name__}: {exc}") from exc
    partial.replace(path)
    io = graph_io(path)
    expected = expected_io(n_features, length)
    if io != expected:
        raise BundleError(f"{path}: exported graph has inputs/outputs {io}, expected {expected}")
    if graph_opset(path) != opset:
        raise BundleError(f"{path}: exported graph declares opset {graph_opset(path)}, expected {opset}")


def expected_io(n_features: int, length: int) -> dict[str, dict[str, list[str | int]]]:
    return {"inputs": {INPUT_NAME: [BATCH_AXIS, n_features, length]},
            "outputs": {"score": [BATCH_AXIS], "contributions": [BATCH_AXIS, n_features],
                        "missing": [BATCH_AXIS, n_features]}}


def graph_io(path: Path) -> dict[str, dict[str, list[str | int]]]:
    """Names and shapes (symbolic axes by name) of the graph's inputs and outputs."""
    graph = onnx.load(os.fspath(path), load_external_data=False).graph

    def dims(value: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {"inputs": {v.name: dims(v) for v in graph.input},
            "outputs": {v.name: dims(v) for v in graph.output}}


def graph_opset(path: Path) -> int:
    """The default-domain opset the file declares."""
    model = onnx.load(os.fspath(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def ort_session(path: Path, threads: int = 1) -> Any:
    """A CPU ONNX Runtime session pinned to `threads` threads (the device's configuration)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
