"""NeoCompiler on SageMaker Neo compilation jobs (optional: devices run model.onnx with ONNX Runtime either way).

Framework: ONNX, not PYTORCH.
* Neo compiles PyTorch only from a TorchScript model definition (.pt/.pth made with torch.jit.trace). Our
  model.tar.gz holds a state_dict and the training manifest, which Neo cannot load; the ONNX graph is the one
  artefact we export, check for equivalence with PyTorch, and ship.
* Neo accepts ONNX for both cloud instances (TargetDevice ml_*) and edge targets: a .tar.gz holding one .onnx
  file, with DataInputConfig naming the graph input ({"windows": [1, features, length]}, batch fixed at 1).
* FrameworkVersion applies only to MXNet, PyTorch, TensorFlow and TFLite, so none is sent.
Caveats: Neo documents ONNX support "1.7 or earlier" (opset <= 12) while training_jobs.onnx_export writes opset 17,
and Neo's device runtime (DLR) is not usable from PyPI; a Neo job is best-effort and may fail on our graph.
The request's model_data_key must therefore be a .tar.gz containing model.onnx, not the version's model.tar.gz.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shared.aws.sagemaker_jobs import SageMakerJobs
from shared.errors import ConfigurationError
from shared.ports import NeoRequest

FRAMEWORK = "ONNX"
INPUT_NAME = "windows"  # training_jobs.onnx_export.INPUT_NAME (not imported: it pulls torch)



class SageMakerNeo(SageMakerJobs):
    def __init__(self, bucket: str, role_arn: str, client: Any = None, max_runtime_s: int = 900,
                 region: str | None = None, compiler_options: Mapping[str, Any] | None = None) -> None:
        super().__init__(bucket, region, client)
        self.role_arn = role_arn
        self.max_runtime_s = max_runtime_s
        # Sent as OutputConfig.CompilerOptions (JSON); required by Neo for TargetPlatform accelerator NVIDIA,
        # e.g. {"gpu-code": "sm_72", "trt-ver": "8.5.2", "cuda-ver": "11.4"}.
        self.compiler_options = dict(compiler_options) if compiler_options else None

    def _enum(self, shape: str) -> frozenset[str]:
        """The values the installed service model allows (botocore itself does not check enums)."""
        return frozenset(self.client.meta.service_model.shape_for(shape).enum)

    def target(self, target: str) -> dict[str, Any]:
        """`ml_c5` -> {"TargetDevice": ...}; `LINUX/ARM64[/NVIDIA]` -> {"TargetPlatform": {Os, Arch[, Accelerator]}}."""
        if "/" not in target:
            if target not in self._enum("TargetDevice"):
                raise ConfigurationError(f"unknown Neo target device {target!r}")
            return {"TargetDevice": target}
        parts = target.split("/")
        if len(parts) not in (2, 3):
            raise ConfigurationError(f"Neo target platform must be OS/ARCH[/ACCELERATOR], got {target!r}")
        platform = dict(zip(("Os", "Arch", "Accelerator"), (p.strip().upper() for p in parts), strict=False))
        for field, shape in (("Os", "TargetPlatformOs"), ("Arch", "TargetPlatformArch"),
                             ("Accelerator", "TargetPlatformAccelerator")):
            if field in platform and platform[field] not in self._enum(shape):
                raise ConfigurationError(f"Neo target platform {target!r}: unknown {field} {platform[field]!r}")
        if platform.get("Accelerator") == "NVIDIA" and not self.compiler_options:
            raise ConfigurationError(f"Neo target platform {target!r} needs compiler options (gpu-code, trt-ver, "
                                     f"cuda-ver)")
        return {"TargetPlatform": platform}

    def job_request(self, request: NeoRequest) -> dict[str, Any]:
        """The CreateCompilationJob parameters for a request."""
        if not request.model_data_key.endswith(".tar.gz"):
            raise ConfigurationError(f"Neo reads a .tar.gz holding model.onnx, got {request.model_data_key}")
        shape = list(request.input_shape)
        if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
            raise ConfigurationError(f"Neo input shape must be positive integers, got {request.input_shape}")
        output: dict[str, Any] = {"S3OutputLocation": self.uri(request.output_prefix.rstrip("/")),
                                  **self.target(request.target_device)}
        if self.compiler_options:
            output["CompilerOptions"] = json.dumps(self.compiler_options, sort_keys=True)
        return {
            "CompilationJobName": request.job_name,
            "RoleArn": self.role_arn,
            "InputConfig": {"S3Uri": self.uri(request.model_data_key),
                            "DataInputConfig": json.dumps({INPUT_NAME: shape}), "Framework": FRAMEWORK},
            "OutputConfig": output,
            "StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime_s},
        }

    def start(self, request: NeoRequest) -> None:
        params = self.job_request(request)
        self.create_job(self.client.create_compilation_job, "CreateCompilationJob", request.job_name, params)
