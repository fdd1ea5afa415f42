"""The SageMaker training-container contract (sagemaker-training-toolkit environment variables).

SageMaker sets SM_CHANNEL_<NAME>, SM_MODEL_DIR, SM_OUTPUT_DATA_DIR, SM_OUTPUT_DIR, SM_HPS and
TRAINING_JOB_NAME; `nacelle train` sets the same variables around a local job directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ConfigurationError

DEFAULT_ROOT = Path("/opt/ml")


@dataclass(frozen=True)
class JobEnvironment:
    job_name: str
    channels: dict[str, Path]
    model_dir: Path
    output_data_dir: Path
    output_dir: Path
    hyperparameters: dict[str, Any]

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    def channel(self, name: str) -> Path | None:
        return self.channels.get(name)


def _decode(value: Any) -> Any:
    """SageMaker passes hyperparameters as strings, script mode's JSON-quoted ("\"auto\""): unquote those and leave
    the rest as written, for the field's own type to read (a dataset hash "0e12" must not become the float 0.0)."""
    if not isinstance(value, str) or not value.startswith('"'):
        return value
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        return value
    return decoded if isinstance(decoded, str) else value


def from_environ(env: Mapping[str, str] | None = None) -> JobEnvironment:
    env = os.environ if env is None else env
    root = Path(env.get("SM_ROOT", str(DEFAULT_ROOT)))
    channels = {key[len("SM_CHANNEL_"):].lower(): Path(value)
                for key, value in env.items() if key.startswith("SM_CHANNEL_")}
    if not channels:
        data_root = root / "input" / "data"
        if data_root.is_dir():
            channels = {p.name: p for p in data_root.iterdir() if p.is_dir()}
    if "train" not in channels:
        raise ConfigurationError("no training channel: set SM_CHANNEL_TRAIN (or provide input/data/train)")
    if "SM_HPS" in env:
        raw_hps = json.loads(env["SM_HPS"])
    else:
        hp_file = Path(env.get("SM_INPUT_CONFIG_DIR", str(root / "input" / "config"))) / "hyperparameters.json"
        raw_hps = json.loads(hp_file.read_text()) if hp_file.is_file() else {}
    if not isinstance(raw_hps, dict):
        raise ConfigurationError("hyperparameters must be a JSON object")
    return JobEnvironment(
        job_name=env.get("TRAINING_JOB_NAME", "local-training"),
        channels=channels,
        model_dir=Path(env.get("SM_MODEL_DIR", str(root / "model"))),
        output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR", str(root / "output" / "data"))),
        output_dir=Path(env.get("SM_OUTPUT_DIR", str(root / "output"))),
        hyperparameters={str(k): _decode(v) for k, v in raw_hps.items()},
    )


def job_environ(job_dir: Path, job_name: str, channels: Mapping[str, Path],
                hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """Lay out a local job directory like /opt/ml and return the variables that describe it."""
    config = job_dir / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    # SageMaker writes every hyperparameter value as a string.
    (config / "hyperparameters.json").write_text(json.dumps(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in hyperparameters.items()}, indent=2))
    for sub in ("model", "output/data"):
        (job_dir / sub).mkdir(parents=True, exist_ok=True)
    env = {
        "SM_ROOT": str(job_dir),
        "TRAINING_JOB_NAME": job_name,
        "SM_MODEL_DIR": str(job_dir / "model"),
        "SM_OUTPUT_DATA_DIR": str(job_dir / "output" / "data"),
        "SM_OUTPUT_DIR": str(job_dir / "output"),
        "SM_INPUT_CONFIG_DIR": str(config),
        "SM_CHANNELS": json.dumps(sorted(channels)),
    }
    env.update({f"SM_CHANNEL_{name.upper()}": str(path) for name, path in channels.items()})
    return env
