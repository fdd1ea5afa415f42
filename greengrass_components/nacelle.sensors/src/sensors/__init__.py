"""nacelle.sensors: a turbine's signals from its controller (Modbus TCP, OPC UA), a CSV replay or the built-in
simulator, sampled at the feature spec's rate and published as sensor messages on the local sensor topic."""

SOURCES = ("modbus", "opcua", "replay", "simulator")
