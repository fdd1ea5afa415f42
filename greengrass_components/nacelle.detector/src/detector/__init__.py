"""Nacelle edge detector: the transport-independent core (messages, scoring, per-turbine pipeline)."""

SCHEMA_VERSION = 1  # sensor messages: shared.messages.SensorMessage.VERSION (a test checks they agree)
