"""Labelled fault episodes: the fault library, the default schedule and their effects on a block.

A severity scales an effect to k = 1, 2 or 4 times the affected feature's normal standard deviation
(the seed's raw std; radians for roll/pitch/yaw). Effects act on the physical signals
before quantisation and draw from their own random streams, so the normal signal is unchanged.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from shared.errors import ConfigurationError
from shared.ml.schema import DEFAULT_FEATURES, SEED_RAW_STD

FAULTS: tuple[str, ...] = (
    "rotor_imbalance", "bearing_wear", "generator_fault", "overspeed", "yaw_misalignment",
    "sensor_stuck", "sensor_dropout", "vibration_noise", "rotation_noise", "voltage_noise",
)
SEVERITIES: dict[str, float] = {"low": 1.0, "medium": 2.0, "high": 4.0}
DROPOUT_FRACTION: dict[str, float] = {"low": 0.3, "medium": 0.6, "high": 1.0}
CHANNELS: tuple[str, ...] = ("rps", "voltage", "wind_speed_rps", "quaternion")  # stuck / dropout targets
QUAT_COLUMNS: tuple[str, ...] = ("qw", "qx", "qy", "qz")
SIGMA: dict[str, float] = dict(zip(DEFAULT_FEATURES, SEED_RAW_STD, strict=True))

US = 1_000_000
RAMP_S = 2.0  # rotor inertia: speed faults ramp in and out over this time
# Default schedule: slots of <= 15 min each hold one episode; >= 3 min fault-free around each episode.
PER_HOUR, LEAD_S, GAP_S = 4, 120.0, 180.0
DURATION_S, DROPOUT_S = (30, 180), (10, 40)
MAX_DROPOUT_SHARE = 0.018  # of the series' samples in any calendar hour (the validator allows 2 %)


def stable_int(*parts: object) -> int:
    """A 64-bit integer from text, stable across processes (unlike hash())."""
    blob = "|".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigurationError(f"{what} must be a timezone-aware datetime, got {value.isoformat()}")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class FaultEpisode:
    turbine_id: str
    fault: str
    severity: str
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ConfigurationError(f"unknown fault {self.fault!r}; valid faults: {', '.join(FAULTS)}")
        if self.severity not in SEVERITIES:
            raise ConfigurationError(f"unknown severity {self.severity!r}; valid: {', '.join(SEVERITIES)}")
        object.__setattr__(self, "start", _utc(self.start, "episode start"))
        object.__setattr__(self, "end", _utc(self.end, "episode end"))
        if self.end <= self.start:
            raise ConfigurationError(f"fault episode ends ({self.end}) before it starts ({self.start})")

    @property
    def k(self) -> float:
        return SEVERITIES[self.severity]

    @property
    def seed(self) -> int:
        return stable_int(self.turbine_id, self.fault, self.severity, self.start.isoformat(),
                          self.end.isoformat())

    @property
    def channel(self) -> str | None:
        """The channel a sensor_stuck / sensor_dropout episode hits (drawn from the episode's RNG)."""
        if self.fault not in ("sensor_stuck", "sensor_dropout"):
            return None
        return CHANNELS[int(np.random.default_rng([self.seed, 0]).integers(len(CHANNELS)))]

    def to_dict(self) -> dict[str, str]:
        return {"turbine_id": self.turbine_id, "fault": self.fault, "severity": self.severity,
                "start": self.start.isoformat(), "end": self.end.isoformat()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FaultEpisode:
        try:
            return cls(str(raw["turbine_id"]), str(raw["fault"]), str(raw["severity"]),
                       datetime.fromisoformat(str(raw["start"])), datetime.fromisoformat(str(raw["end"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"not a fault episode: {raw!r} ({exc})") from exc


def parse_faults(spec: str) -> tuple[str, ...]:
    """'none' -> (), 'default' -> every fault, else a comma-separated list of fault names."""
    text = spec.strip()
    if text == "none":
        return ()
    if text == "default":
        return FAULTS
    names = [n.strip() for n in text.split(",")]
    bad = [n for n in names if n not in FAULTS]
    if bad:
        raise ConfigurationError(f"unknown fault name(s) {', '.join(repr(b) for b in bad)}; valid: 'none', "
                                 f"'default' or a comma-separated list of {', '.join(FAULTS)}")
    return tuple(dict.fromkeys(names))


# -- schedule ----------------------------------------------------------------------------------------


def _hours(a: float, b: float) -> range:
    return range(math.floor(a / 3600), math.ceil(b / 3600))


def _overlap(a: float, b: float, c: float, d: float) -> float:
    return max(0.0, min(b, d) - max(a, c))


def _dropout_ok(ep: FaultEpisode, placed: list[FaultEpisode], t0: float, t1: float) -> bool:
    """One dropout per channel and calendar hour, and few enough NaNs for that hour's file."""
    a, b = ep.start.timestamp(), ep.end.timestamp()
    for h in _hours(a, b):
        h0, h1 = h * 3600.0, h * 3600.0 + 3600.0
        if _overlap(a, b, h0, h1) > MAX_DROPOUT_SHARE * _overlap(t0, t1, h0, h1):
            return False
        same = [o for o in placed if o.fault == "sensor_dropout" and o.channel == ep.channel]
        if any(h in _hours(o.start.timestamp(), o.end.timestamp()) for o in same):
            return False
    return True


def default_schedule(turbine_id: str, start: datetime, duration_s: float, rng: np.random.Generator,
                     kinds: Sequence[str] = FAULTS) -> list[FaultEpisode]:
    """About 4 episodes per hour (at least 3 in any hour), 30-180 s each (dropout 10-40 s).

    The series after its first 2 minutes is cut into equal slots of at most 15 minutes; each slot holds
    one episode with at least 90 s of quiet at both of its ends. Kinds and severities are uniform.
    """
    start = _utc(start, "schedule start")
    kinds = tuple(kinds)
    if not kinds:
        return []
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown:
        raise ConfigurationError(f"unknown fault name(s) {unknown}; valid: {', '.join(FAULTS)}")
    n = math.ceil(PER_HOUR * duration_s / 3600)
    while n and (duration_s - LEAD_S) / n < DURATION_S[0] + GAP_S + 2:
        n -= 1
    t0 = start.timestamp()
    episodes: list[FaultEpisode] = []
    for i in range(n):
        slot = (duration_s - LEAD_S) / n
        lo_slot = LEAD_S + i * slot
        for _attempt in range(10):
            kind = str(rng.choice(kinds))
            severity = str(rng.choice(list(SEVERITIES)))
            lo, hi = DROPOUT_S if kind == "sensor_dropout" else DURATION_S
            d = int(rng.integers(lo, min(hi, int(slot - GAP_S) - 2) + 1))
            first, last = math.ceil(lo_slot + GAP_S / 2), math.floor(lo_slot + slot - GAP_S / 2 - d)
            offset = int(rng.integers(first, last + 1))
            ep = FaultEpisode(turbine_id, kind, severity, start + timedelta(seconds=offset),
                              start + timedelta(seconds=offset + d))
            if kind != "sensor_dropout" or _dropout_ok(ep, episodes, t0, t0 + duration_s):
                episodes.append(ep)
                break
    return episodes


def schedule_for(turbine_id: str, seed: int, start: datetime, duration_s: float,
                 faults: str = "default") -> list[FaultEpisode]:
    """The schedule generate_dataset uses for one turbine (so a stream can reproduce a dataset)."""
    kinds = parse_faults(faults)
    rng = np.random.default_rng([seed, stable_int(turbine_id), 3])
    return default_schedule(turbine_id, start, duration_s, rng, kinds) if kinds else []


# -- effects on one block of samples -----------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """An episode on a model's time axis (integer microseconds since the series start)."""

    ep: FaultEpisode
    start_us: int
    end_us: int

    def mask(self, t_us: np.ndarray) -> np.ndarray:
        return (t_us >= self.start_us) & (t_us < self.end_us)


RngFor = Callable[[FaultEpisode], np.random.Generator]


def rotor_delta(windows: Iterable[Window], t_us: np.ndarray) -> np.ndarray:
    """Added true rotor speed (rps): overspeed +k sigma, yaw misalignment -k sigma, ramped by inertia."""
    out = np.zeros(len(t_us))
    for w in windows:
        sign = {"overspeed": 1.0, "yaw_misalignment": -1.0}.get(w.ep.fault)
        if sign is not None:
            ramp = np.clip(np.minimum(t_us - w.start_us, w.end_us - t_us) / (RAMP_S * US), 0.0, 1.0)
            out += sign * w.ep.k * SIGMA["rps"] * ramp
    return out


def apply_signals(windows: Iterable[Window], t_us: np.ndarray, sig: dict[str, np.ndarray],
                  theta: np.ndarray, rng_for: RngFor, frozen: dict[int, tuple[float, ...]]) -> None:
    """Add the sample-level effects in place. sig: roll, pitch, yaw (rad), voltage (ADC counts),
    rps and wind_speed_rps (1 Hz readings); theta: rotor angle (rad). Stuck sensors apply last."""
    for w in sorted(windows, key=lambda w: w.ep.fault == "sensor_stuck"):
        m = w.mask(t_us)
        nm, ep = int(m.sum()), w.ep
        if not nm:
            continue
        k, fault = ep.k, ep.fault
        const = np.random.default_rng([ep.seed, 1])  # draws that must not change between blocks
        if fault == "rotor_imbalance":  # a wobble at the rotor frequency, RMS k sigma
            phase = const.uniform(0, 2 * np.pi)
            sig["roll"][m] += math.sqrt(2) * k * SIGMA["roll"] * np.sin(theta[m] + phase)
            sig["pitch"][m] += math.sqrt(2) * k * SIGMA["pitch"] * np.cos(theta[m] + phase)
        elif fault == "bearing_wear":  # broadband vibration, RMS k sigma / 4 -> k sigma
            grow = 0.25 + 0.75 * (t_us[m] - w.start_us) / (w.end_us - w.start_us)
            rng = rng_for(ep)
            for name in ("roll", "pitch"):
                sig[name][m] += k * SIGMA[name] * grow * rng.standard_normal(nm)
        elif fault == "generator_fault":
            sig["voltage"][m] -= k * SIGMA["voltage"]
        elif fault in ("vibration_noise", "rotation_noise", "voltage_noise"):
            rng = rng_for(ep)
            names = {"vibration_noise": ("roll", "pitch", "yaw"), "rotation_noise": ("rps",),
                     "voltage_noise": ("voltage",)}[fault]
            for name in names:
                sig[name][m] += k * SIGMA[name] * rng.standard_normal(nm)
        elif fault == "sensor_stuck":
            _stuck(ep, m, sig, const, frozen)


def _stuck(ep: FaultEpisode, m: np.ndarray, sig: dict[str, np.ndarray], const: np.random.Generator,
           frozen: dict[int, tuple[float, ...]]) -> None:
    """Freeze the channel at its onset value offset by k sigma (random sign; upwards if it would go < 0)."""
    channel = ep.channel or "rps"
    names = ("roll", "pitch", "yaw") if channel == "quaternion" else (channel,)
    if ep.seed not in frozen:
        i = int(np.argmax(m))
        sign = 1.0 if const.random() < 0.5 else -1.0
        if channel != "quaternion" and sig[channel][i] - ep.k * SIGMA[channel] < 0:
            sign = 1.0
        offsets = (sign, sign, 0.0) if channel == "quaternion" else (sign,)
        frozen[ep.seed] = tuple(float(sig[n][i]) + s * ep.k * SIGMA[n]
                                for n, s in zip(names, offsets, strict=True))
    for name, value in zip(names, frozen[ep.seed], strict=True):
        sig[name][m] = value


def apply_dropout(windows: Iterable[Window], t_us: np.ndarray, out: dict[str, np.ndarray],
                  rng_for: RngFor) -> None:
    """Empty readings (NaN) for a severity-dependent fraction of the samples of the episode."""
    for w in windows:
        if w.ep.fault != "sensor_dropout":
            continue
        lost = w.mask(t_us) & (rng_for(w.ep).random(len(t_us)) < DROPOUT_FRACTION[w.ep.severity])
        for name in QUAT_COLUMNS if w.ep.channel == "quaternion" else (w.ep.channel or "rps",):
            out[name][lost] = np.nan
