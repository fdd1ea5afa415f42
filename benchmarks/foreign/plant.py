"""Suite `plant_1hz`: 1 Hz process data from a pump loop, in many short runs.

A water circulation loop (tank, centrifugal pump, outlet valve, flow meter) logged once a second:
two vibration RMS channels on the pump, motor current and supply voltage, outlet pressure, motor
temperature, fluid temperature (thermocouple) and volume flow. Each run is a separate experiment with
its own operating point; the motor and the fluid warm up during a run, so both temperatures drift
slowly under normal operation, and current follows the fluid temperature a little (viscosity).
Sensors have their own resolution, slow noise and occasional outliers.

Faulty runs hold one anomaly of 2-8 minutes after the first rows (train on the first few hundred
rows, test on the rest); fault-free runs, as long as the others, measure false alarms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.foreign.common import Run, ar1
from shared.ml.metrics import Fault

CHANNELS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
            "Voltage", "VolumeFlowRateRMS")
DECIMALS = (4, 4, 3, 3, 2, 2, 1, 1)
SLOW = ("Temperature", "Thermocouple")
FAULTS = ("valve_closure", "cavitation", "rotor_imbalance", "leak", "cooling_failure", "supply_sag")


@dataclass(frozen=True)
class PlantRun:
    """What a run looks like: its length, and where its anomaly (if any) lies."""

    rows: int
    fault: str | None
    fault_start: int = 0
    fault_rows: int = 0


def plan_runs(rng: np.random.Generator, faulty: int, fault_free: int, train_rows: int) -> list[PlantRun]:
    runs = []
    for i in range(faulty):
        rows = int(rng.integers(1000, 1300))
        fault_rows = int(rng.integers(120, 481))
        start = int(rng.integers(train_rows + 60, rows - fault_rows - 60))
        runs.append(PlantRun(rows, FAULTS[i % len(FAULTS)], start, fault_rows))
    runs += [PlantRun(int(rng.integers(1000, 1300)), None) for _ in range(fault_free)]
    return runs


def simulate(plan: PlantRun, run_id: str, t0: float, seed: int) -> Run:
    """One run: the channel values (rows x 8, NaN for missing) and its labelled fault."""
    rng = np.random.default_rng(seed)
    n = plan.rows
    t = np.arange(n, dtype=np.float64)
    speed = rng.uniform(0.85, 1.15) * (1 + ar1(rng, n, 300.0, 0.004))  # pump speed, relative
    valve = rng.uniform(0.75, 1.0) * np.ones(n)
    leak = np.zeros(n)
    vib_gain = np.ones(n)
    vib_burst = np.zeros(n)
    cooling = np.zeros(n)
    supply = np.zeros(n)
    a, b = plan.fault_start, plan.fault_start + plan.fault_rows
    if plan.fault is not None:
        ramp = np.clip((t[a:b] - a) / rng.uniform(5, 25), 0, 1)
        if plan.fault == "valve_closure":
            valve[a:b] *= 1 - rng.uniform(0.2, 0.45) * ramp
        elif plan.fault == "cavitation":
            vib_gain[a:b] *= 1 + rng.uniform(0.25, 0.6) * ramp
            vib_burst[a:b] = rng.uniform(0.3, 0.8) * ramp * (rng.random(b - a) < 0.25)
            valve[a:b] *= 1 - rng.uniform(0.05, 0.12) * ramp
        elif plan.fault == "rotor_imbalance":
            vib_gain[a:b] *= 1 + rng.uniform(0.3, 0.7) * ramp
        elif plan.fault == "leak":
            leak[a:b] = rng.uniform(0.08, 0.2) * np.clip((t[a:b] - a) / rng.uniform(30, 90), 0, 1)
        elif plan.fault == "cooling_failure":  # the motor heats up far faster than its normal warm-up
            cooling[a:b] = rng.uniform(1.5, 4.0) / 60.0 * (t[a:b] - a)
        elif plan.fault == "supply_sag":
            supply[a:b] = -rng.uniform(0.05, 0.1) * ramp

    # Hydraulics: the pump curve against the valve's resistance; a leak loses flow before the meter.
    opening = valve / np.sqrt(valve**2 + 0.35)
    flow_nominal = 32.0 * speed * opening / (1 / np.sqrt(1 + 0.35))
    flow = flow_nominal * (1 - leak)
    head = 1.15 * speed**2 - 0.9 * (flow_nominal / 32.0) ** 2 * (1 - 0.6 * leak)
    # Thermal: the motor warms towards its steady state, the fluid warms linearly with pumping.
    tau = rng.uniform(1500, 4000)
    motor0 = rng.uniform(60, 80)
    motor_rise = rng.uniform(6, 16)
    motor = motor0 + motor_rise * (1 - np.exp(-t / tau)) + cooling
    fluid = rng.uniform(20, 30) + rng.uniform(0.4, 2.0) / 1000 * t + ar1(rng, n, 600.0, 0.05)
    volts = 230.0 * (1 + ar1(rng, n, 900.0, 0.004) + supply)
    load = speed**3 * (0.55 + 0.45 * flow / 32.0)
    current = (0.35 + 1.05 * load) * (1 - 0.004 * (fluid - fluid[0])) * (230.0 / volts) ** 0.5
    vib1 = (0.020 + 0.012 * speed**2) * vib_gain * (1 + vib_burst)
    vib2 = (0.031 + 0.018 * speed**2) * vib_gain * (1 + 0.6 * vib_burst)
    shared_noise = ar1(rng, n, 3.0, 0.05)

    def noisy(x: np.ndarray, rel: float, tau_s: float, white: float) -> np.ndarray:
        return x * (1 + ar1(rng, n, tau_s, rel)) + rng.normal(0, white, n)

    values = np.column_stack([
        vib1 * (1 + shared_noise) + rng.normal(0, 0.0012, n),
        vib2 * (1 + 0.7 * shared_noise) + rng.normal(0, 0.0015, n),
        noisy(current, 0.01, 5.0, 0.02),
        noisy(head, 0.02, 4.0, 0.015),
        motor + ar1(rng, n, 30.0, 0.05) + rng.normal(0, 0.06, n),
        fluid + rng.normal(0, 0.04, n),
        noisy(volts, 0.001, 2.0, 0.6),
        noisy(flow, 0.006, 8.0, 0.15),
    ])
    outliers = rng.random(values.shape) < 0.001  # occasional bad readings, as real loggers have
    values[outliers] *= 1 + rng.normal(0, 0.05, int(outliers.sum()))
    for j, d in enumerate(DECIMALS):
        values[:, j] = np.round(values[:, j], d)
    faults = [] if plan.fault is None else [Fault(run_id, plan.fault, "unknown", t0 + a, t0 + b - 1)]
    return Run(run_id, t0 + t, values, faults)
