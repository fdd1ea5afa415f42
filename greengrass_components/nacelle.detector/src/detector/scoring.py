"""The edge model: a verified bundle's ONNX graph plus the manifest that travels with it."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import BundleError
from shared.ml.edge_bundle import EdgeManifest, verify
from shared.ml.episodes import EpisodeRule
from shared.ml.spec import FeatureSpec

OUTPUTS = ("score", "contributions", "missing")  # names the compile step gives the graph's outputs
WARMUP_RUNS = 5
WARMUP_BATCH = 2  # more than one window: a graph whose batch axis is fixed at 1 fails here, not on every message
LOAD_TIMEOUT_S = 60.0  # loading and warming up a model: far above a sound bundle's need, far below forever


@dataclass
class EdgeModel:
    bundle_dir: Path
    manifest: EdgeManifest
    session: Any  # onnxruntime.InferenceSession
    input_name: str
    output_names: list[str]

    @property
    def spec(self) -> FeatureSpec:
        return self.manifest.bundle.spec

    @property
    def threshold(self) -> float:
        return self.manifest.bundle.threshold

    @property
    def rule(self) -> EpisodeRule:
        return self.manifest.bundle.rule

    @property
    def model_version(self) -> int | None:
        return self.manifest.model_version

    def offsets(self, turbine_id: str) -> np.ndarray:
        """(F,) float32 offsets subtracted from this turbine's features (the spec's turbine_levels)."""
        return self.manifest.bundle.offsets(turbine_id)

    @classmethod
    def load(cls, bundle_dir: str | Path, warmup_runs: int = WARMUP_RUNS) -> EdgeModel:
        """Verify the bundle (format versions, digests, equivalence), open it on one CPU thread and
        warm it up, so the first real window pays no initialisation cost. Raises BundleError, whatever
        the failure (a malformed manifest, a graph that disagrees with it, ONNX Runtime's own errors)."""
        bundle_dir = Path(bundle_dir)
        try:
            return cls._load(bundle_dir, warmup_runs)
        except BundleError:
            raise
        except Exception as exc:  # MemoryError and RecursionError included: a bundle cannot stop the detector
            raise BundleError(f"{bundle_dir}: cannot load the bundle: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _load(cls, bundle_dir: Path, warmup_runs: int) -> EdgeModel:
        import onnxruntime as ort

        manifest = verify(bundle_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(os.fspath(bundle_dir / manifest.model_file), options,
                                       providers=["CPUExecutionProvider"])
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if manifest.input_name not in inputs:
            raise BundleError(f"{bundle_dir}: graph inputs {inputs} lack the manifest's {manifest.input_name!r}")
        if not set(OUTPUTS) <= set(outputs):
            raise BundleError(f"{bundle_dir}: graph outputs {outputs} lack {list(OUTPUTS)}")
        model = cls(bundle_dir, manifest, session, manifest.input_name, list(OUTPUTS))
        model.check_declared_shapes()
        model.warm_up(warmup_runs)
        return model

    def expected_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """Per graph input/output name, its shape; None stands for the batch axis, which must stay dynamic."""
        n, width = self.spec.n_features, self.spec.geometry.width
        return {self.input_name: (None, n, width), "score": (None,), "contributions": (None, n),
                "missing": (None, n)}

    def check_declared_shapes(self) -> None:
        """The shapes the graph declares against the expected ones: a fixed batch axis or another feature
        count is refused before any window is scored. A symbolic axis other than the batch is left to warm-up."""
        expected = self.expected_shapes()
        for arg in (*self.session.get_inputs(), *self.session.get_outputs()):
            if arg.name in expected and not _shape_fits(arg.shape, expected[arg.name]):
                raise BundleError(f"{self.bundle_dir}: graph {arg.name!r} is declared {arg.shape}; expected "
                                  f"{_shape_text(expected[arg.name])} with a dynamic batch axis")

    def warm_up(self, runs: int = WARMUP_RUNS, timeout_s: float | None = None) -> None:
        """Score a batch of fully observed windows at the normalisation mean: the outputs must have the
        expected shapes and the score must be finite, else the model would score nothing usable."""
        spec = self.spec
        mean = self.manifest.bundle.mean.astype(np.float32).reshape(1, spec.n_features, 1)
        x = np.ascontiguousarray(np.broadcast_to(mean, (WARMUP_BATCH, spec.n_features, spec.geometry.width)))
        score, contributions, missing = self._timed_runs(x, runs, LOAD_TIMEOUT_S if timeout_s is None else timeout_s)
        shapes = (score.shape, contributions.shape, missing.shape)
        expected = self.expected_shapes()
        wanted = tuple(tuple(WARMUP_BATCH if d is None else d for d in expected[name]) for name in OUTPUTS)
        if shapes != wanted:
            raise BundleError(f"{self.bundle_dir}: on a batch of {WARMUP_BATCH} windows the graph returned shapes "
                              f"{shapes}; expected {wanted}")
        if not np.isfinite(score).all():
            raise BundleError(f"{self.bundle_dir}: the graph scores {score.tolist()} on windows at the "
                              "normalisation mean; a usable model scores a finite number")

    def _timed_runs(self, x: np.ndarray, runs: int, timeout_s: float) -> list[np.ndarray]:
        """`runs` runs on `x`, stopped by ONNX Runtime's terminate flag after `timeout_s`: a graph may loop for ever,
        and a run that is stopped frees its thread."""
        import onnxruntime as ort

        options = ort.RunOptions()
        timer = threading.Timer(timeout_s, setattr, (options, "terminate", True))
        timer.daemon = True
        timer.start()
        try:
            for _ in range(max(1, runs)):
                outputs = self.session.run(self.output_names, {self.input_name: x}, options)
        except Exception as exc:
            if options.terminate:
                raise BundleError(f"{self.bundle_dir}: warm-up runs took more than {timeout_s:g} s; stopped") from exc
            raise
        finally:
            timer.cancel()
        return list(outputs)

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, F, geometry.width) float32 windows -> score (B,), contributions (B, F), missing (B, F)."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        score, contributions, missing = self.session.run(self.output_names, {self.input_name: x})  # already ndarrays
        return score, contributions, missing


def _shape_fits(declared: Any, expected: tuple[int | None, ...]) -> bool:
    """ONNX Runtime declares an axis as an int (fixed), a str (symbolic) or None (unknown)."""
    if not isinstance(declared, list | tuple) or len(declared) != len(expected):
        return False
    for axis, want in zip(declared, expected, strict=True):
        fixed = isinstance(axis, int)
        if (want is None and fixed) or (want is not None and fixed and axis != want):
            return False
    return True


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("batch" if d is None else str(d) for d in shape) + "]"
