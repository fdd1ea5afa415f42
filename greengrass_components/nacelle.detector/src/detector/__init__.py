"""Nacelle edge detector: the transport-independent core (messages, scoring, per-turbine pipeline)."""

SCHEMA_VERSION = 1  # sensor messages (the outgoing ones are defined in shared.messages)
