"""Normal operation of one mini wind turbine (the seed data's units): a stateful, chunked stepper.

Randomness is drawn in fixed 10 s blocks aligned to the series start, so `step()` returns the same
samples however a series is chunked. Continuous physics (wind, rotor, temperatures) runs on a 0.1 s grid
and is interpolated to the jittered ~20 Hz sample times. Faults act inside a block on the physical
signals before quantisation, from their own random streams: outside its episodes a faulty run equals
the fault-free run of the same seed. Drifts (nacelle.simulator.drifts: lasting, not faults) act likewise, without
random draws of their own.
"""

from __future__ import annotations

import bisect
import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import numpy as np

from nacelle.simulator.drifts import DriftEpisode, DriftWindow, ambient_offset, apply_drifts
from nacelle.simulator.faults import (
    FaultEpisode,
    Window,
    apply_dropout,
    apply_signals,
    rotor_delta,
    stable_int,
)
from shared.errors import ConfigurationError
from shared.ml.schema import RAW_COLUMNS, STRING_COLUMNS

US = 1_000_000
BLOCK_S = 10  # one BME680 reading per block
BLOCK_US = BLOCK_S * US
GRID_N = 100  # physics steps per block
GRID_US = BLOCK_US // GRID_N
DT = GRID_US / US
MAX_SAMPLES = BLOCK_US // 45_000 + 2  # sample intervals drawn per block (always the same number)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
EDGES = 16  # light-sensor / anemometer edges per rotation
COUNTS_PER_G = 16384.0  # MPU-6050 accelerometer at +-2 g
G = 9.80665
INT_COUNTERS = ("arduino_timestamp", "nanoFreemem", "ax", "ay", "az")  # int64; every other number is float64

# Wind at the anemometer (rotations/s): OU processes (time constant s, std) for turbulence, eddies and
# slow drift, plus gusts: Poisson shot noise (rate 1/s, mean peak, rise time s) through two first-order
# stages. Brief turbulent dips below cut-in are frequent; the rotor coasts through them (below).
WIND_OU = ((1.0, 0.205), (4.0, 0.340), (1800.0, 0.012))
SHOTS = ((1 / 90, 0.37, 2.5),)
SHOT_MEAN = tuple(rate * peak * math.e * tau for rate, peak, tau in SHOTS)  # removed from the mean wind
# Calm spells: rare (Poisson, one per LULL_EVERY_S on average, none in a series' first LULL_LEAD_S) and
# long. The whole wind, turbulence included, is scaled down by a depth drawn from LULL_DEPTH over a
# raised-cosine ramp of LULL_RAMP_S, held for a plateau drawn from LULL_PLATEAU_S, and ramped back up:
# the rotor stops for minutes, a rare and clearly separated stop / start.
LULL_EVERY_S = 5 * 86400.0
LULL_LEAD_S = 3600.0
LULL_RAMP_S = 45.0
LULL_PLATEAU_S = (180.0, 600.0)
LULL_DEPTH = (0.8, 0.95)
# The rotor is driven towards the power curve with its aerodynamic time constant (TurbineParams.rotor_tau)
# while the wind is above cut-in. Below cut-in it free-wheels on bearing friction (viscous, time constant
# COAST_TAU, plus a constant drag that brings it to rest): it loses little speed in a dip of a few seconds
# and stops only when the wind stays low for tens of seconds. Cut-in has hysteresis: a stopped rotor
# restarts only after the wind has been above cut-in for RESTART_S without a break.
COAST_TAU = 40.0  # s
COAST_DRAG = 0.002  # rps/s
RESTART_S = 3.0
RESTART_STEPS = round(RESTART_S / DT)
VIB_AR = 0.6  # per-sample correlation of the hub vibration
ENV_OU = ((3 * 3600.0, 0.8), (3600.0, 2.0), (6 * 3600.0, 1.5), (1800.0, 0.08))  # ambtemp, RH, hPa, ln gas


def _ar1_matrix(a: float, n: int) -> np.ndarray:
    i = np.arange(n)
    lag = i[:, None] - i[None, :]
    return np.where(lag >= 0, a ** np.maximum(lag, 0), 0.0)


_ar1_cached = lru_cache(maxsize=256)(_ar1_matrix)


def _ar1(x0: float, a: float, u: np.ndarray) -> np.ndarray:
    """x[0] = x0, x[j+1] = a x[j] + u[j]; returns the len(u) + 1 values."""
    n = len(u)
    return np.concatenate(([x0], a ** np.arange(1, n + 1) * x0 + _ar1_cached(a, n) @ u))


def _quantise(x: np.ndarray, step: float) -> np.ndarray:
    return np.rint(x / step) * step


def _round2(x: np.ndarray) -> np.ndarray:
    return np.rint(x * 100.0) / 100.0  # the nearest double to k/100: prints as exactly 2 decimals


def _empty() -> dict[str, np.ndarray]:
    cols = {c: np.zeros(0) for c in RAW_COLUMNS if c not in STRING_COLUMNS}
    cols.update({c: np.zeros(0, dtype=np.int64) for c in INT_COUNTERS})
    return {"_t": np.zeros(0, dtype=np.int64), **cols}


@dataclass(frozen=True)
class TurbineParams:
    """One turbine's constants: small per-turbine offsets around the calibrated fleet values."""

    wind_mean: float  # anemometer rps
    cut_in: float  # anemometer rps at which the rotor starts
    slope: float  # rotor rps per anemometer rps above cut-in
    rated: float  # rotor rps at and above rated wind
    cut_out: float  # anemometer rps above which the rotor is braked to a stop
    rotor_tau: float  # s, rotor inertia
    volt_gain: float  # ADC counts per rps above the rectifier threshold
    volt_r0: float  # rps at which the rectifier starts to conduct
    ripple: float  # ADC counts, rectifier ripple at the pole-passing frequency
    tilt: float  # rad, hub-axis tilt: a roll/pitch wobble at the rotor frequency
    tilt_phase: float
    mount_roll: float
    mount_pitch: float
    vib: float  # rad, hub vibration at nominal speed
    imu_radius: float  # m, IMU distance from the rotor axis (centripetal acceleration)
    die_offset: float  # K, MPU-6050 self-heating
    heat: float  # K per rps^2, gearbox heating
    ambtemp: float
    humidity: float
    pressure: float
    gas: float  # kOhm / 100
    freemem: int
    boot_ms: int
    clock_ppm: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> TurbineParams:
        def jit(value: float, rel: float) -> float:
            return value * (1.0 + rel * float(rng.standard_normal()))

        # the calibrated quantities (means and stds of wind, rps, voltage, roll, pitch) vary very little
        return cls(
            wind_mean=jit(2.54, 0.002), cut_in=jit(1.34, 0.004), slope=jit(1.86, 0.004),
            rated=jit(6.0, 0.03), cut_out=jit(6.5, 0.03), rotor_tau=jit(1.5, 0.1),
            volt_gain=jit(43.0, 0.005), volt_r0=jit(0.5, 0.01), ripple=jit(2.0, 0.2),
            tilt=jit(0.009, 0.15), tilt_phase=float(rng.uniform(0, 2 * math.pi)),
            mount_roll=jit(0.004, 1.0), mount_pitch=jit(0.004, 1.0), vib=jit(0.0133, 0.04),
            imu_radius=jit(0.02, 0.1), die_offset=jit(7.0, 0.1), heat=jit(1.0, 0.1),
            ambtemp=float(rng.uniform(6, 22)), humidity=float(rng.uniform(45, 75)),
            pressure=float(rng.uniform(1005, 1022)), gas=float(rng.uniform(0.8, 2.0)),
            freemem=int(rng.integers(900, 1300)), boot_ms=int(rng.integers(60_000, 86_400_000)),
            clock_ppm=float(rng.uniform(-50, 50)),
        )

    def rotor_target(self, wind: np.ndarray) -> np.ndarray:
        """Power curve: stopped below cut-in and above cut-out, linear in between, flat above rated."""
        run = (wind >= self.cut_in) & (wind <= self.cut_out)
        return np.where(run, np.minimum(self.slope * (wind - self.cut_in), self.rated), 0.0)


@dataclass
class _State:
    rng: np.random.Generator
    block: int  # index of the next block
    next_us: int  # time of the next sample, us since the series start
    wind: np.ndarray  # OU components
    shots: np.ndarray  # (gusts, filter stage)
    lull: tuple[float, float, float] | None  # calm spell: (s since it began, at the block start), plateau, depth
    rotor: float  # true rotor speed without faults, rps
    stopped: bool  # the rotor has come to rest and waits for the restart (a coasting rotor is not stopped)
    calm: int  # while stopped: grid steps the wind has been above cut-in without a break
    rotor_phase: float  # rotations (with faults)
    anemo_phase: float  # rotations
    rps_reading: float
    wind_reading: float
    vib: np.ndarray  # roll / pitch vibration AR states (unit variance)
    gear: float  # die temperature, deg C
    env: np.ndarray  # BME680 OU states
    frozen: dict[int, tuple[float, ...]] = field(default_factory=dict)  # stuck-sensor values


class TurbineModel:
    """Simulates one turbine from `start`; `step(seconds)` returns the next samples, column-wise.

    The same (seed, turbine_id) always gives the same samples; another turbine id gives another turbine.
    """

    def __init__(self, turbine_id: str, seed: int, start: datetime, episodes: Iterable[FaultEpisode] = (),
                 nano_id: str | None = None) -> None:
        if seed < 0:
            raise ConfigurationError(f"seed must be >= 0, got {seed}")
        if start.tzinfo is None:
            raise ConfigurationError(f"start must be timezone-aware (UTC), got {start.isoformat()}")
        self.turbine_id = turbine_id
        self.nano_id = nano_id or f"nano-{turbine_id}"
        self.start = start.astimezone(UTC)
        self._start_us = (self.start - EPOCH) // ONE_US
        self._entropy = (seed, stable_int(turbine_id))
        self.params = TurbineParams.draw(np.random.default_rng([*self._entropy, 0]))
        self._windows: list[Window] = []  # pending and active episodes, by start
        self._done: list[Window] = []  # episodes over before the current block
        self._drifts: list[DriftWindow] = []  # lasting changes that are not faults (nacelle.simulator.drifts)
        self._st = self._initial_state(np.random.default_rng([*self._entropy, 1]))
        self._snapshot = copy.deepcopy(self._st)
        self._cursor_us = 0
        self._buffer: dict[str, np.ndarray] | None = None
        for ep in episodes:
            self.add_episode(ep)

    @property
    def now(self) -> datetime:
        """The time up to which samples have been returned."""
        return self.start + ONE_US * self._cursor_us

    @property
    def episodes(self) -> list[FaultEpisode]:
        return [w.ep for w in self._done + self._windows]

    def _initial_state(self, rng: np.random.Generator) -> _State:
        p = self.params
        wind = np.array([sd * rng.standard_normal() for _tau, sd in WIND_OU])
        w0 = float(p.wind_mean + wind.sum())
        rotor = float(p.rotor_target(np.array([w0]))[0])
        env = np.array([sd * rng.standard_normal() for _tau, sd in ENV_OU])
        return _State(rng=rng, block=0, next_us=int(rng.integers(45_000, 55_001)), wind=wind,
                      shots=np.repeat(np.array(SHOT_MEAN)[:, None], 2, axis=1), lull=None, rotor=rotor,
                      stopped=w0 < p.cut_in, calm=0,
                      rotor_phase=float(rng.random()), anemo_phase=float(rng.random()),
                      rps_reading=round(rotor * EDGES) / EDGES, wind_reading=round(w0 * EDGES) / EDGES,
                      vib=rng.standard_normal(2),
                      gear=p.ambtemp + env[0] + p.die_offset + p.heat * rotor**2, env=env)

    @property
    def drifts(self) -> list[DriftEpisode]:
        return [w.ep for w in self._drifts]

    # -- faults and drifts -------------------------------------------------------------------------------
    def add_drift(self, ep: DriftEpisode) -> None:
        """Start a drift (it never ends); it must not start before the samples already returned end."""
        if ep.turbine_id != self.turbine_id:
            raise ConfigurationError(f"drift for {ep.turbine_id!r} given to turbine {self.turbine_id!r}")
        start_us = (ep.start - self.start) // ONE_US
        if start_us < self._cursor_us:
            raise ConfigurationError(f"drift starts at {ep.start.isoformat()}, before the simulator's "
                                     f"current time {self.now.isoformat()}")
        self._drifts.append(DriftWindow(ep, start_us))
        if start_us < self._st.block * BLOCK_US:  # the buffered block was made without it: redo it
            self._redo_block()

    def _redo_block(self) -> None:
        self._st = copy.deepcopy(self._snapshot)
        block = self._block()
        keep = block["_t"] >= self._cursor_us
        self._buffer = {k: v[keep] for k, v in block.items()}

    def add_episode(self, ep: FaultEpisode) -> None:
        """Schedule a fault; it must not start before the samples already returned end."""
        if ep.turbine_id != self.turbine_id:
            raise ConfigurationError(f"episode for {ep.turbine_id!r} given to turbine {self.turbine_id!r}")
        w = Window(ep, (ep.start - self.start) // ONE_US, (ep.end - self.start) // ONE_US)
        if w.start_us < self._cursor_us:
            raise ConfigurationError(f"fault starts at {ep.start.isoformat()}, before the simulator's "
                                     f"current time {self.now.isoformat()}")
        bisect.insort(self._windows, w, key=lambda v: v.start_us)
        if w.start_us < self._st.block * BLOCK_US:  # the buffered block was made without it: redo it
            self._redo_block()

    # -- stepping ----------------------------------------------------------------------------------------
    def step(self, seconds: float) -> dict[str, np.ndarray]:
        """The samples of the next `seconds`: one array per raw column (numbers as float64 with NaN for
        an empty reading, int64 for the integer counters, str for ids and eventTime) plus `ts`, the
        float64 epoch seconds."""
        if seconds < 0:
            raise ConfigurationError(f"cannot step back in time ({seconds} s)")
        target = self._cursor_us + round(seconds * US)
        parts = [self._buffer] if self._buffer is not None else []
        while self._st.block * BLOCK_US < target:
            self._snapshot = copy.deepcopy(self._st)
            parts.append(self._block())
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else _empty()
        n = int(np.searchsorted(merged["_t"], target))
        self._buffer = {k: v[n:] for k, v in merged.items()}
        self._cursor_us = max(self._cursor_us, target)
        return self._finish({k: v[:n] for k, v in merged.items()})

    def _finish(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = cols.pop("_t")
        n = len(t)
        when = (self._start_us + t).astype("datetime64[us]")
        out: dict[str, np.ndarray] = {
            "nanoId": np.full(n, self.nano_id), "turbineId": np.full(n, self.turbine_id),
            "eventTime": np.char.add(np.datetime_as_string(when, unit="us"), "+00:00"),
            "ts": (self._start_us + t) / US,
        }
        out.update(cols)
        return out

    def _block(self) -> dict[str, np.ndarray]:
        st, p = self._st, self.params
        rng = st.rng
        t0 = st.block * BLOCK_US
        windows = self._active(t0)

        # sample times: intervals uniform in [45, 55] ms
        t = st.next_us + np.concatenate(([0], np.cumsum(rng.integers(45_000, 55_001, MAX_SAMPLES))))
        n = int(np.searchsorted(t, t0 + BLOCK_US))
        t, st.next_us = t[:n], int(t[n])

        # rotor: driven towards the power curve, coasting below cut-in; speed faults add to the true speed
        wind = self._wind()
        rotor = self._rotor(wind)
        rotor = np.maximum(rotor + rotor_delta(windows, t0 + GRID_US * np.arange(GRID_N + 1)), 0.0)

        # rotating things: phases on the grid (exact for piecewise-linear speed), 1 Hz edge counters
        rotor_phase = st.rotor_phase + np.concatenate(([0.0], np.cumsum(DT * (rotor[1:] + rotor[:-1]) / 2)))
        anemo_phase = st.anemo_phase + np.concatenate(([0.0], np.cumsum(DT * (wind[1:] + wind[:-1]) / 2)))
        st.rotor_phase, st.anemo_phase = float(rotor_phase[-1]), float(anemo_phase[-1])
        rps_sec, st.rps_reading = self._counter(rotor_phase, st.rps_reading)
        wind_sec, st.wind_reading = self._counter(anemo_phase, st.wind_reading)

        # to the sample times
        u = (t - t0) / GRID_US
        j = np.minimum(u.astype(np.int64), GRID_N - 1)
        f = u - j
        speed = rotor[j] + f * (rotor[j + 1] - rotor[j])
        phase = rotor_phase[j] + DT * (rotor[j] * f + (rotor[j + 1] - rotor[j]) * f * f / 2)
        theta = 2 * np.pi * np.mod(phase, 2.0)  # the quaternion's double cover repeats every 2 rotations
        sec = (t - t0) // US

        # the hub IMU: yaw is the rotor angle; roll/pitch a tilt wobble plus vibration growing with speed
        e = math.sqrt(1 - VIB_AR**2) * rng.standard_normal((2, n))
        vib = np.stack([_ar1(float(st.vib[i]), VIB_AR, e[i])[1:] for i in range(2)])
        st.vib = vib[:, -1].copy() if n else st.vib
        shake = p.vib * (0.5 + 0.5 * np.minimum(speed / 2.2, 2.0))
        sig = {
            "roll": p.mount_roll + p.tilt * np.sin(theta + p.tilt_phase) + shake * vib[0],
            "pitch": p.mount_pitch + p.tilt * np.cos(theta + p.tilt_phase) + shake * vib[1],
            "yaw": theta.copy(),
            "voltage": p.volt_gain * np.maximum(speed - p.volt_r0, 0.0)
            + p.ripple * np.sin(2 * np.pi * 4 * phase) + rng.standard_normal(n),
            "rps": rps_sec[sec], "wind_speed_rps": wind_sec[sec],
        }
        if self._drifts:
            apply_drifts(self._drifts, t, sig, theta, (shake * vib[0], shake * vib[1]), p.tilt, p.tilt_phase)
        env = self._environment(rotor, j)

        def rng_for(ep: FaultEpisode) -> np.random.Generator:
            return np.random.default_rng([*self._entropy, 2, ep.seed, st.block])

        apply_signals(windows, t, sig, theta, rng_for, st.frozen)
        out = self._quantised(t, sig, speed) | env
        out["arduino_timestamp"] = p.boot_ms + np.floor(t * (1 + p.clock_ppm * 1e-6) / 1000).astype(np.int64)
        apply_dropout(windows, t, out, rng_for)
        out["_t"] = t
        st.block += 1
        return out

    def _active(self, t0: int) -> list[Window]:
        """Episodes overlapping the block at t0 (the list is sorted by start; ended ones are dropped)."""
        while self._windows and self._windows[0].end_us <= t0:
            self._done.append(self._windows.pop(0))
        active = []
        for w in self._windows:
            if w.start_us >= t0 + BLOCK_US:
                break
            if w.end_us > t0:
                active.append(w)
        return active

    def _wind(self) -> np.ndarray:
        """The anemometer's wind speed (rps) on the block's grid, both ends included."""
        st, rng = self._st, self._st.rng
        eps = rng.standard_normal((len(WIND_OU), GRID_N))
        comps = []
        for i, (tau, sd) in enumerate(WIND_OU):
            a = math.exp(-DT / tau)
            comps.append(_ar1(float(st.wind[i]), a, sd * math.sqrt(1 - a * a) * eps[i]))
        st.wind = np.array([c[-1] for c in comps])
        for i, (rate, peak, tau) in enumerate(SHOTS):
            kicks = (rng.random(GRID_N) < rate * DT) * peak * rng.exponential(math.e * tau / DT, GRID_N)
            a = math.exp(-DT / tau)
            s1 = _ar1(float(st.shots[i, 0]), a, (1 - a) * kicks)
            s2 = _ar1(float(st.shots[i, 1]), a, (1 - a) * s1[:-1])
            st.shots[i] = s1[-1], s2[-1]
            comps.append(s2 - SHOT_MEAN[i])
        return np.maximum((self.params.wind_mean + np.sum(comps, axis=0)) * self._lull(), 0.0)

    def _lull(self) -> np.ndarray | float:
        """The calm-spell factor on the block's grid (1 outside calm spells)."""
        st = self._st
        u = st.rng.random(4)  # drawn in every block: the random stream does not depend on the calm spells
        if st.lull is None and st.block * BLOCK_S >= LULL_LEAD_S and u[0] < BLOCK_S / LULL_EVERY_S:
            lo, hi = LULL_PLATEAU_S
            depth_lo, depth_hi = LULL_DEPTH
            st.lull = (-DT * int(u[1] * GRID_N), lo + (hi - lo) * u[2], depth_lo + (depth_hi - depth_lo) * u[3])
        if st.lull is None:
            return 1.0
        since, plateau, depth = st.lull
        total = 2 * LULL_RAMP_S + plateau
        t = since + DT * np.arange(GRID_N + 1)
        ramp = np.clip(np.minimum(t, total - t) / LULL_RAMP_S, 0.0, 1.0)
        st.lull = None if since + BLOCK_S >= total else (since + BLOCK_S, plateau, depth)
        return 1.0 - depth * (0.5 - 0.5 * np.cos(np.pi * ramp))

    def _rotor(self, wind: np.ndarray) -> np.ndarray:
        """The true rotor speed (rps) without faults on the block's grid, both ends included, from the wind
        there: a first-order lag towards the power curve above cut-in, coasting below it, and a restart
        after RESTART_S of wind above cut-in once it has come to rest."""
        st, p = self._st, self.params
        a = math.exp(-DT / p.rotor_tau)
        target = p.rotor_target(wind[:-1])
        low = wind[:-1] < p.cut_in
        if not st.stopped and not low.any():  # the usual block: driven by the wind throughout
            rotor = _ar1(st.rotor, a, (1 - a) * target)
        else:
            b, drag = math.exp(-DT / COAST_TAU), COAST_DRAG * COAST_TAU
            r, stopped, calm = st.rotor, st.stopped, st.calm
            values = [r]
            for below, goal in zip(low.tolist(), target.tolist(), strict=True):
                if stopped:
                    calm = 0 if below else calm + 1
                    stopped = calm < RESTART_STEPS
                elif below:  # free-wheeling: exact solution of r' = -r / COAST_TAU - COAST_DRAG
                    r = (r + drag) * b - drag
                    if r <= 0.0:
                        r, stopped, calm = 0.0, True, 0
                else:
                    r = a * r + (1 - a) * goal
                values.append(r)
            rotor = np.array(values)
            st.stopped, st.calm = stopped, calm
        st.rotor = float(rotor[-1])
        return rotor

    def _environment(self, rotor: np.ndarray, j: np.ndarray) -> dict[str, np.ndarray]:
        """Gearbox (IMU die) temperature lagging the rotor load; the BME680, read once per block."""
        st, p, rng = self._st, self.params, self._st.rng
        n = len(j)
        for i, (tau, sd) in enumerate(ENV_OU):
            b = math.exp(-BLOCK_S / tau)
            st.env[i] = b * st.env[i] + sd * math.sqrt(1 - b * b) * rng.standard_normal()
        ambient = p.ambtemp + st.env[0] + (ambient_offset(self._drifts, st.block * BLOCK_US) if self._drifts else 0.0)
        a = math.exp(-DT / 900.0)
        gear = _ar1(st.gear, a, (1 - a) * (ambient + p.die_offset + p.heat * rotor[:-1] ** 2))
        st.gear = float(gear[-1])
        noise = rng.standard_normal(4) * (0.01, 0.05, 0.01, 0.005)
        bme = (ambient, np.clip(p.humidity - 2.5 * st.env[0] + st.env[1], 5, 99), p.pressure + st.env[2],
               p.gas * math.exp(st.env[3]))
        out = {name: np.full(n, _round2(np.array(v + e)))
               for name, v, e in zip(("ambtemp", "humidity", "pressure", "gas"), bme, noise, strict=True)}
        out["gearboxtemp"] = _round2(gear[j] + 0.02 * rng.standard_normal(n))
        out["nanoFreemem"] = np.full(n, p.freemem - 2 * int(rng.integers(0, 3)), dtype=np.int64)
        return out

    @staticmethod
    def _counter(phase: np.ndarray, previous: float) -> tuple[np.ndarray, float]:
        """Edges counted over each whole second / 16; a count is shown during the following second."""
        counts = np.diff(np.floor(phase[:: GRID_N // BLOCK_S] * EDGES)) / EDGES
        return np.concatenate(([previous], counts[:-1])), float(counts[-1])

    def _quantised(self, t: np.ndarray, sig: dict[str, np.ndarray],
                   speed: np.ndarray) -> dict[str, np.ndarray]:
        """Sensor outputs: a unit quaternion (ZYX Euler angles), DMP gravity and raw accelerometer counts,
        1/16-step counters and the 10-bit ADC."""
        hr, hp, hy = sig["roll"] / 2, sig["pitch"] / 2, sig["yaw"] / 2
        cr, sr, cp, sp, cy, sy = np.cos(hr), np.sin(hr), np.cos(hp), np.sin(hp), np.cos(hy), np.sin(hy)
        w, x = cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy
        y, z = cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy
        grav = (2 * (x * z - w * y), 2 * (w * x + y * z), w * w - x * x - y * y + z * z)
        centripetal = (2 * np.pi * speed) ** 2 * self.params.imu_radius / G  # in g, towards the axis (-x)
        acc_noise = self._st.rng.standard_normal((3, len(t))) * 40.0
        lin = (grav[0] - centripetal, grav[1], grav[2])
        out = {f"q{c}": _round2(v) for c, v in zip("wxyz", (w, x, y, z), strict=True)}
        out.update({f"g{c}": _round2(v) for c, v in zip("xyz", grav, strict=True)})
        out.update({f"a{c}": np.clip(np.rint(COUNTS_PER_G * v + acc_noise[i]), -32768, 32767).astype(np.int64)
                    for i, (c, v) in enumerate(zip("xyz", lin, strict=True))})
        out["rps"] = _quantise(np.maximum(sig["rps"], 0.0), 1 / EDGES)
        out["wind_speed_rps"] = _quantise(np.maximum(sig["wind_speed_rps"], 0.0), 1 / EDGES)
        out["voltage"] = np.clip(np.rint(sig["voltage"]), 0, 1023)
        return out
