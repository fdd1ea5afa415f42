"""Suite `scada_10min`: ten-minute SCADA records of a small wind farm over a year.

Wind speed, active power, rotor speed, pitch angle, gearbox and generator bearing temperatures,
nacelle and ambient temperature. The farm shares its weather (seasonal, daily and synoptic cycles in
temperature; windier winters); every turbine has its own power-curve efficiency and bearing offsets.
Temperatures follow ambient and load through thermal lags, so they drift with the seasons: a model
trained on January to March sees a summer it never saw. Records go missing now and then and the
logger has outages of a few hours.

Faults develop over hours to days: gearbox or generator bearing overheating (heat grows with load),
pitch misalignment (power and rotor speed below the curve), icing (only in frost) and a frozen sensor.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from benchmarks.foreign.common import Run, ar1, lowpass
from shared.ml.metrics import Fault

CHANNELS = ("wind_speed", "power", "rotor_speed", "pitch_angle", "gearbox_bearing_temp",
            "generator_bearing_temp", "nacelle_temp", "ambient_temp")
DECIMALS = (2, 1, 2, 2, 1, 1, 1, 1)
# The model's inputs: the machine temperatures as their rise over ambient (through it they follow the
# seasons), the ambient temperature itself.
RISES = {"gearbox_bearing_rise": "gearbox_bearing_temp", "generator_bearing_rise": "generator_bearing_temp",
         "nacelle_rise": "nacelle_temp"}
FEATURES = ("wind_speed", "power", "rotor_speed", "pitch_angle", *RISES, "ambient_temp")
STEP_S = 600.0
PER_DAY = 144
RATED_KW, CUT_IN, RATED_WIND, CUT_OUT = 2000.0, 3.0, 12.0, 25.0
FAULTS = ("gearbox_bearing_overheat", "generator_bearing_overheat", "pitch_misalignment", "icing", "sensor_freeze")
START = datetime(2025, 1, 1, tzinfo=UTC)


def weather(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Farm-wide wind speed (m/s) and ambient temperature (°C), one value per 10 minutes."""
    step = np.arange(n)
    day = step / PER_DAY
    hour = (step % PER_DAY) / 6.0
    season = np.cos(2 * np.pi * day / 365.0)  # +1 on 1 January
    log_wind = (np.log(7.0) + 0.15 * season + 0.08 * np.sin(2 * np.pi * (hour - 14) / 24)
                + ar1(rng, n, 72.0, 0.45))
    ambient = (9.0 - 9.5 * np.cos(2 * np.pi * (day - 15) / 365.0) + 3.0 * np.sin(2 * np.pi * (hour - 9) / 24)
               + ar1(rng, n, 432.0, 3.0))
    return np.exp(log_wind), ambient


def power_curve(v: np.ndarray) -> np.ndarray:
    """kW from the 10-minute mean wind: the cubic region smoothed by turbulence, rated, then cut-out."""
    spread = v[:, None] * (1 + 0.12 * np.array([-1.5, -0.75, 0.0, 0.75, 1.5])[None, :])
    cubic = np.clip((spread**3 - CUT_IN**3) / (RATED_WIND**3 - CUT_IN**3), 0.0, 1.0)
    cubic[spread < CUT_IN] = 0.0
    p = RATED_KW * cubic.mean(axis=1)
    p[v >= CUT_OUT] = 0.0
    return p


def simulate(unit: str, wind: np.ndarray, ambient: np.ndarray, faults: list[tuple[str, int, int, int]],
             seed: int) -> Run:
    """One turbine. `faults`: (kind, start step, ramp steps, end step) in the year's 10-minute steps."""
    rng = np.random.default_rng(seed)
    n = len(wind)
    v = np.clip(wind * (1 + ar1(rng, n, 6.0, 0.05)) + rng.normal(0, 0.15, n), 0.0, None)
    operating = (v >= CUT_IN) & (v < CUT_OUT)
    power_loss = np.zeros(n)
    pitch_offset = np.zeros(n)
    heat_gearbox = np.zeros(n)
    heat_generator = np.zeros(n)
    frozen: list[tuple[int, int, int]] = []
    labelled: list[Fault] = []
    for kind, a, ramp, b in faults:
        growth = np.clip((np.arange(a, b) - a) / max(ramp, 1), 0.0, 1.0)
        if kind == "gearbox_bearing_overheat":
            heat_gearbox[a:b] = rng.uniform(6, 14) * growth
        elif kind == "generator_bearing_overheat":
            heat_generator[a:b] = rng.uniform(6, 14) * growth
        elif kind == "pitch_misalignment":
            offset = rng.uniform(3, 6)
            pitch_offset[a:b] = offset * growth
            power_loss[a:b] = offset / 40.0 * growth
        elif kind == "icing":
            power_loss[a:b] = np.maximum(power_loss[a:b], rng.uniform(0.25, 0.6) * growth)
        elif kind == "sensor_freeze":
            frozen.append((int(rng.integers(0, 4)), a, b))
        labelled.append(Fault(unit, kind, "unknown", float(_epoch(a)), float(_epoch(b - 1))))

    efficiency = rng.uniform(0.97, 1.03)
    power = np.minimum(power_curve(v) * efficiency * (1 - power_loss), RATED_KW)
    power = np.where(operating, power * (1 + rng.normal(0, 0.015, n)) + rng.normal(0, 8, n), 0.0)
    power = np.clip(power, 0.0, RATED_KW * 1.02)
    rotor = np.where(operating, np.clip(1.35 * v, 6.0, 16.0) * (1 - 0.5 * power_loss), 1.0 + 0.2 * v)
    rotor = rotor + rng.normal(0, 0.12, n)
    pitch = np.where(operating, np.clip(2.6 * (v - 11.3), 0.0, None), 70.0) + pitch_offset
    pitch = pitch + rng.normal(0, 0.25, n)
    load = power / RATED_KW
    nacelle = lowpass(ambient + 6.0 + 10.0 * load, 6.0) + rng.normal(0, 0.25, n)
    gearbox = (lowpass(nacelle + 18.0 + rng.uniform(-2, 2) + 28.0 * load, 12.0)
               + heat_gearbox * (0.4 + 0.6 * load) + ar1(rng, n, 6.0, 0.3))
    generator = (lowpass(nacelle + 12.0 + rng.uniform(-2, 2) + 30.0 * load + 4.0 * rotor / 16.0, 9.0)
                 + heat_generator * (0.4 + 0.6 * load) + ar1(rng, n, 6.0, 0.3))
    values = np.column_stack([v, power, rotor, pitch, gearbox, generator, nacelle, ambient + rng.normal(0, 0.1, n)])
    frozen_channels = (0, 2, 4, 6)  # wind speed, rotor speed, gearbox bearing, nacelle temperature
    for which, a, b in frozen:
        channel = frozen_channels[which]
        values[a:b, channel] = values[a, channel]
    for j, d in enumerate(DECIMALS):
        values[:, j] = np.round(values[:, j], d)
    values[rng.random(values.shape) < 0.003] = np.nan  # single missing readings
    keep = np.ones(n, dtype=bool)
    for _ in range(int(rng.integers(6, 14))):  # logger outages: the records are absent
        a = int(rng.integers(0, n))
        keep[a:a + int(rng.integers(6, 72))] = False
    step = np.arange(n)
    return Run(unit, _epoch(step[keep]), values[keep], labelled)


def _epoch(step: int | np.ndarray) -> np.ndarray:
    return START.timestamp() + np.asarray(step, dtype=np.float64) * STEP_S


def schedule(rng: np.random.Generator, ambient: np.ndarray, first: int, n: int, count: int
             ) -> list[tuple[str, int, int, int]]:
    """`count` non-overlapping faults after step `first`, at least five days apart; icing only in frost."""
    out: list[tuple[str, int, int, int]] = []
    kinds = sorted(rng.permutation(FAULTS)[:count].tolist(), key=lambda k: k == "icing")  # frost comes late
    slots = np.linspace(first + 3 * PER_DAY, n - 8 * PER_DAY, count + 1).astype(int)
    for kind, lo, hi in zip(kinds, slots[:-1], slots[1:], strict=True):
        if kind == "icing":
            cold = np.flatnonzero(ambient[lo:hi - 3 * PER_DAY] < 0.5)
            if not len(cold):
                kind = "sensor_freeze"
            else:
                a = lo + int(cold[int(rng.integers(len(cold)))])
                out.append((kind, a, int(rng.integers(2, 12)), a + int(rng.integers(PER_DAY // 2, 2 * PER_DAY))))
                continue
        a = int(rng.integers(lo, hi - 6 * PER_DAY))
        if kind.endswith("overheat"):
            ramp, length = int(rng.integers(36, 144)), int(rng.integers(2 * PER_DAY, 5 * PER_DAY))
        elif kind == "pitch_misalignment":
            ramp, length = 1, int(rng.integers(3 * PER_DAY, 6 * PER_DAY))
        else:
            ramp, length = 1, int(rng.integers(PER_DAY // 2, 2 * PER_DAY))
        out.append((kind, a, ramp, a + length))
    return out
