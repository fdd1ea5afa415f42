"""Nacelle: event-driven MLOps for wind-turbine anomaly detection at the edge."""

__version__ = "0.1.0"
