"""The raw mini-turbine CSV schema, with the real units.

The order is fixed: the seed's simulator addresses columns by index.
"""

from __future__ import annotations

RAW_COLUMNS: tuple[str, ...] = (
    "nanoId",  # id of the edge computer (string)
    "turbineId",  # id of the turbine (string)
    "arduino_timestamp",  # millis() since the Arduino booted
    "nanoFreemem",  # free memory on the Arduino, bytes
    "eventTime",  # ISO-8601 UTC, e.g. 2026-01-01T00:00:00.050000+00:00
    "rps",  # rotor speed: light-sensor edges over 1 s / 16 -> 1 Hz updates, steps of 0.0625
    "voltage",  # generator voltage as a raw 10-bit ADC count (0-1023), not millivolts
    "qw",  # MPU-6050 DMP orientation unit quaternion (w, x, y, z), 2 decimals
    "qx",
    "qy",
    "qz",
    "gx",  # DMP gravity vector, g
    "gy",
    "gz",
    "ax",  # raw accelerometer counts (int16)
    "ay",
    "az",
    "gearboxtemp",  # MPU-6050 die temperature, deg C
    "ambtemp",  # BME680 ambient temperature, deg C (read every 10 s)
    "humidity",  # BME680 relative humidity, %
    "pressure",  # BME680 air pressure, hPa
    "gas",  # BME680 gas resistance, kOhm / 100
    "wind_speed_rps",  # anemometer edges over 1 s / 16 -> 1 Hz updates, steps of 0.0625
)

STRING_COLUMNS: frozenset[str] = frozenset({"nanoId", "turbineId", "eventTime"})

# Seed statistics of the six default features , order as DEFAULT_FEATURES.
DEFAULT_FEATURES: tuple[str, ...] = ("roll", "pitch", "yaw", "wind_speed_rps", "rps", "voltage")
SEED_RAW_STD: tuple[float, ...] = (0.0164209, 0.0163350, 1.80995, 0.390587, 0.619846, 26.3817)
# Raw means estimated from the seed data (denoised mean + the DC shrinkage of the seed's wavelet step).
SEED_RAW_MEAN_ESTIMATE: dict[str, float] = {"wind_speed_rps": 2.54, "rps": 2.23, "voltage": 74.2}
