"""The local embedded stack, in three parts.

- `adapters/`: the local stand-ins for the AWS services, adapters of shared.ports (object store, state, registry,
  notifier, training and compile jobs, Greengrass), and the data directory they live in.
- `runtime/`: what runs them: the durable event bus, the routes built from template.yaml, job and device runners,
  S3 events, the IoT rule engine, and the stack that wires adapters to the use cases (`nacelle up`).
- `edge/`: the simulated edge: MQTT broker, PKI, Greengrass nucleus, fleet of devices, recipes, component users.

runtime imports edge and adapters, edge imports adapters, adapters import neither.
"""
