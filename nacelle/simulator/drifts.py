"""Slow, lasting changes of a turbine that are not faults: the turbine keeps working, its data no longer looks like
the data the model was trained on. Each is labelled (kind, magnitude, start, when fully developed) so a benchmark
knows which samples drifted.

* seasonal_temperature: the ambient temperature falls by 15 K x magnitude over DRIFT_RAMP_S (a cold season coming,
  compressed into an hour), then stays. The IMU's zero-g offset follows the temperature (the MPU-6050 datasheet's
  +-1.5 mg/K; IMU_RAD_PER_K on roll and pitch), the gearbox (IMU die) temperature with it.
* sensor_recalibration: maintenance replaced the anemometer; from the start on it reads 10 % x magnitude more for
  the same wind (the rotor, driven by the real wind, does not change).
* component_replacement: a new hub bearing and rotor: from the start on the hub vibration is (1 + 0.8 x magnitude)
  times as strong, the tilt wobble (1 + 0.6 x magnitude) times with another phase, and the hub sits
  0.006 x magnitude rad further in roll.

Effects are deterministic functions of time and of the signals already drawn (no random draws of their own), so
outside a drift a drifting run equals the undrifted run of the same seed, as with faults.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from shared.errors import ConfigurationError

DRIFTS: tuple[str, ...] = ("seasonal_temperature", "sensor_recalibration", "component_replacement")
DRIFT_RAMP_S: dict[str, float] = {"seasonal_temperature": 3600.0, "sensor_recalibration": 0.0,
                                  "component_replacement": 0.0}
MAX_MAGNITUDE = 4.0
SEASON_DELTA_K = -15.0  # ambient change at magnitude 1
IMU_RAD_PER_K = (1.2e-3, 0.8e-3)  # roll, pitch offset per kelvin (about 1.2 and 0.8 mg/K of the accelerometer)
ANEMOMETER_GAIN = 0.10  # extra reading at magnitude 1
VIBRATION_GAIN, WOBBLE_GAIN, WOBBLE_PHASE, MOUNT_ROLL = 0.8, 0.6, 1.3, 0.006  # component replacement at magnitude 1
US = 1_000_000


@dataclass(frozen=True)
class DriftEpisode:
    turbine_id: str
    kind: str
    start: datetime
    magnitude: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in DRIFTS:
            raise ConfigurationError(f"unknown drift {self.kind!r}; valid drifts: {', '.join(DRIFTS)}")
        if isinstance(self.magnitude, bool) or not isinstance(self.magnitude, int | float) \
                or not 0 < self.magnitude <= MAX_MAGNITUDE:
            raise ConfigurationError(f"drift magnitude must be in (0, {MAX_MAGNITUDE:g}], got {self.magnitude!r}")
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ConfigurationError(f"drift start must be timezone-aware, got {self.start.isoformat()}")
        object.__setattr__(self, "start", self.start.astimezone(UTC))

    @property
    def ramp_s(self) -> float:
        return DRIFT_RAMP_S[self.kind]

    @property
    def full_at(self) -> datetime:
        """When the drift is fully developed (the start itself for a step)."""
        return datetime.fromtimestamp(self.start.timestamp() + self.ramp_s, UTC)

    def label(self) -> dict[str, Any]:
        """What a label file records: every sample from `start` on drifted (fully from `full_at`); none ends."""
        return {"turbine": self.turbine_id, "drift": self.kind, "magnitude": self.magnitude,
                "start": self.start.timestamp(), "full_at": self.full_at.timestamp(), "end": None}


@dataclass(frozen=True)
class DriftWindow:
    """A drift on a model's time axis (integer microseconds since the series start)."""

    ep: DriftEpisode
    start_us: int

    def level(self, t_us: np.ndarray) -> np.ndarray:
        """0 before the start, rising to the magnitude over the ramp (raised cosine), then the magnitude."""
        since = (np.asarray(t_us, dtype=np.float64) - self.start_us) / US
        if self.ep.ramp_s <= 0:
            return np.where(since >= 0, self.ep.magnitude, 0.0)
        x = np.clip(since / self.ep.ramp_s, 0.0, 1.0)
        return np.asarray(self.ep.magnitude * (0.5 - 0.5 * np.cos(math.pi * x)))


def ambient_offset(drifts: Iterable[DriftWindow], t_us: int) -> float:
    """Kelvin added to the ambient temperature at t_us."""
    return sum(float(w.level(np.array([t_us]))[0]) * SEASON_DELTA_K for w in drifts
               if w.ep.kind == "seasonal_temperature")


def apply_drifts(drifts: Iterable[DriftWindow], t_us: np.ndarray, sig: dict[str, np.ndarray], theta: np.ndarray,
                 vibration: tuple[np.ndarray, np.ndarray], tilt: float, tilt_phase: float) -> None:
    """Change the signals in place. sig: roll, pitch (rad) and wind_speed_rps (the anemometer's 1 Hz reading);
    theta: the rotor angle; vibration: the roll and pitch vibration already in sig; tilt, tilt_phase: the
    turbine's wobble."""
    for w in drifts:
        level = w.level(t_us)
        if not level.any():
            continue
        kind = w.ep.kind
        if kind == "seasonal_temperature":
            kelvin = level * SEASON_DELTA_K
            sig["roll"] += IMU_RAD_PER_K[0] * kelvin
            sig["pitch"] += IMU_RAD_PER_K[1] * kelvin
        elif kind == "sensor_recalibration":
            sig["wind_speed_rps"] *= 1.0 + ANEMOMETER_GAIN * level
        elif kind == "component_replacement":
            on = level > 0
            gain = 1.0 + WOBBLE_GAIN * level
            phase = tilt_phase + WOBBLE_PHASE
            sig["roll"] += VIBRATION_GAIN * level * vibration[0] + MOUNT_ROLL * level + on * tilt * (
                gain * np.sin(theta + phase) - np.sin(theta + tilt_phase))
            sig["pitch"] += VIBRATION_GAIN * level * vibration[1] + on * tilt * (
                gain * np.cos(theta + phase) - np.cos(theta + tilt_phase))
