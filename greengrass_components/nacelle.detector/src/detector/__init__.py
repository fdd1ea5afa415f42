"""Nacelle edge detector: the transport-independent core (messages, scoring, per-turbine pipeline)."""

SCHEMA_VERSION = 1  # sensor and health messages
ANOMALY_SCHEMA_VERSION = 2  # anomaly messages: one score per episode plus per-feature contributions
