"""The edge model: a verified bundle's ONNX graph plus the manifest that travels with it."""

from __future__ import annotations

import os
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
        model.warm_up(warmup_runs)
        return model

    def warm_up(self, runs: int = WARMUP_RUNS) -> None:
        spec = self.spec
        mean = self.manifest.bundle.mean.astype(np.float32).reshape(1, spec.n_features, 1)
        x = np.ascontiguousarray(np.broadcast_to(mean, (1, spec.n_features, spec.geometry.width)))
        for _ in range(max(1, runs)):
            score, contributions, missing = self.score(x)
        shapes = (score.shape, contributions.shape, missing.shape)
        if shapes != ((1,), (1, spec.n_features), (1, spec.n_features)):
            raise BundleError(f"{self.bundle_dir}: the graph returned shapes {shapes}; expected (1,), "
                              f"(1, {spec.n_features}) and (1, {spec.n_features})")

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, F, geometry.width) float32 windows -> score (B,), contributions (B, F), missing (B, F)."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        score, contributions, missing = self.session.run(self.output_names, {self.input_name: x})  # already ndarrays
        return score, contributions, missing
