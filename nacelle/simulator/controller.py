"""A simulated turbine controller: one turbine's current signal values served over Modbus TCP (pymodbus) or OPC UA
(asyncua) on loopback, for the nacelle.sensors component to read.

    python -m nacelle.simulator.controller --thing turbine-01 --home .nacelle --protocol modbus --port 15020
                                           [--speed 1]

As a process (the local stack's `nacelle up --source modbus|opcua`): the device's TurbineStream (the simulator's
physics, seeded like nacelle/simulator/device.py) advances in real time; the newest sample is what the registers or
nodes hold, like a PLC's process image. Faults requested with `nacelle fleet inject` reach it through the same
inbox as the MQTT simulator (nacelle/simulator/device.py) and are labelled the same way.

The register map and node ids are those of shared/sensor_map.py (the defaults: float32 input registers from 0, in
the spec's input column order; nodes `ns=2;s=Turbine.<signal>`), so the component decodes what this encodes. The
process also serves `scan`, its sample counter (uint32 after the spec's signals; `turbine_signals`,
`turbine_register_map`), which the local stack maps as the component's `sampleCounter`.
`Controller` runs either server in a thread of its own for tests and benchmarks: set values, restart the server on
its port, stall it (its event loop stops answering, connections stay open).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.errors import ConfigurationError, NacelleError
from shared.sensor_map import (
    Register,
    default_node_ids,
    default_register_map,
    parse_node_ids,
    parse_register_map,
)

log = logging.getLogger("nacelle.simulator.controller")

NAMESPACE_URI = "urn:nacelle:turbine"
SERVER_URI = "urn:nacelle:controller"
PROTOCOLS = ("modbus", "opcua")
Values = Mapping[str, float | None]


# ------------------------------------------------------------------ Modbus TCP
class ModbusEndpoint:
    """A Modbus TCP server (unit id `unit_id`; other ids are refused) holding one register image per type."""

    def __init__(self, registers: Sequence[Register], unit_id: int = 1) -> None:
        self.registers = tuple(registers)
        self.unit_id = unit_id
        size = {kind: max([r.end for r in self.registers if r.register_type == kind], default=0) + 1
                for kind in ("holding", "input")}
        self.image = {kind: [0] * n for kind, n in size.items()}
        self._server: Any = None
        self.port = 0

    def set(self, values: Values) -> None:
        for reg in self.registers:
            if reg.signal in values:
                words = reg.encode(values[reg.signal])
                self.image[reg.register_type][reg.address:reg.end] = words

    async def _serve_image(self, function_code: int, start: int, address: int, count: int, registers: list[int],
                           set_values: Any) -> None:
        """pymodbus' read hook: the request is answered from the current image."""
        image = self.image["holding" if function_code == 3 else "input"]
        registers[:len(image)] = image
        return None

    async def start(self, port: int = 0) -> int:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        blocks = [[SimData(0, count=len(self.image[kind]), values=0, datatype=DataType.REGISTERS)]
                  for kind in ("holding", "input")]
        device = SimDevice(id=self.unit_id, simdata=(bits, list(bits), blocks[0], blocks[1]),
                           action=self._serve_image)
        self._server = ModbusTcpServer(device, address=("127.0.0.1", port))
        await self._server.serve_forever(background=True)
        self.port = self._server.transport.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()


# ------------------------------------------------------------------ OPC UA
class OpcUaEndpoint:
    """An OPC UA server with one Double variable per signal, at the configured node ids. With `certificate` and
    `private_key` it also offers Basic256Sha256 SignAndEncrypt (any client certificate is accepted)."""

    def __init__(self, nodes: Mapping[str, str], certificate: Path | None = None,
                 private_key: Path | None = None) -> None:
        self.nodes = dict(nodes)
        self.certificate, self.private_key = certificate, private_key
        self._server: Any = None
        self._ids: dict[str, Any] = {}
        self._values: dict[str, float | None] = {}
        self.port = 0

    async def _build(self) -> Any:
        from asyncua import Server, ua

        logging.getLogger("asyncua").setLevel(logging.CRITICAL)
        server = Server()
        await server.init()
        server.set_server_name("nacelle simulated turbine controller")
        await server.set_application_uri(SERVER_URI)
        policies = [ua.SecurityPolicyType.NoSecurity]
        if self.certificate is not None and self.private_key is not None:
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
            policies.append(ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt)
        server.set_security_policy(policies)
        await server.register_namespace(NAMESPACE_URI)
        turbine = await server.nodes.objects.add_object(ua.NodeId(ua.String("Turbine"), ua.Int16(2)), "Turbine")
        for signal_name, text in self.nodes.items():
            node_id = ua.NodeId.from_string(text)
            while node_id.NamespaceIndex >= len(await server.get_namespace_array()):
                await server.register_namespace(f"{NAMESPACE_URI}:{len(await server.get_namespace_array())}")
            await turbine.add_variable(node_id, signal_name, 0.0, varianttype=ua.VariantType.Double)
            self._ids[signal_name] = node_id
        return server

    async def set_async(self, values: Values) -> None:
        from asyncua import ua

        if self._server is None:
            self._values.update(values)
            return
        now: Any = datetime.now(UTC)  # asyncua types it as its own DateTime
        for signal_name, value in values.items():
            node_id = self._ids.get(signal_name)
            if node_id is None:
                continue
            self._values[signal_name] = value
            if value is None or (isinstance(value, float) and math.isnan(value)):
                bad = ua.StatusCode(ua.UInt32(ua.StatusCodes.BadSensorFailure))
                dv = ua.DataValue(ua.Variant(None, ua.VariantType.Null), StatusCode=bad, SourceTimestamp=now,
                                  ServerTimestamp=now)
            else:
                dv = ua.DataValue(ua.Variant(float(value), ua.VariantType.Double), SourceTimestamp=now,
                                  ServerTimestamp=now)
            await self._server.write_attribute_value(node_id, dv)

    async def start(self, port: int = 0) -> int:
        if self._server is None:
            self._server = await self._build()
            await self.set_async(dict(self._values))
        self._server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/nacelle")
        await self._server.start()
        self.port = self._server.bserver._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()  # the address space stays: start() serves it again


# ------------------------------------------------------------------ a server in a thread of its own
class Controller:
    """One endpoint on its own event loop thread, driven from synchronous code (tests, benchmarks, the process)."""

    def __init__(self, endpoint: ModbusEndpoint | OpcUaEndpoint) -> None:
        self.endpoint = endpoint
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="controller", daemon=True)
        self._thread.start()
        self.port = 0
        self.up = False

    def _call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, port: int | None = None) -> int:
        """Serve on `port` (default: the previous one, else any free port); returns the port."""
        self.port = self._call(self.endpoint.start(self.port if port is None else port))
        self.up = True
        return self.port

    def stop(self) -> None:
        """Stop serving (connections are closed); `start()` serves the same values on the same port again."""
        self._call(self.endpoint.stop())
        self.up = False

    def set(self, values: Values) -> None:
        """Make `values` the current ones (returns once the server holds them)."""
        if isinstance(self.endpoint, OpcUaEndpoint):
            self._call(self.endpoint.set_async(values))
        else:
            self._call(_run(self.endpoint.set, values))

    def stall(self, seconds: float) -> None:
        """The server stops answering for `seconds` (its loop is blocked; connections stay open). Returns at once."""
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self.endpoint.stop(), 10)
        with contextlib.suppress(Exception):
            self._call(_cancel_tasks(), 10)  # the servers' session and subscription loops
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


async def _run(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


async def _cancel_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


SCAN = "scan"  # the simulated controller's sample counter: one more for every sample it produces (mod 2**32)


def turbine_signals(columns: Sequence[str]) -> tuple[str, ...]:
    """What a simulated turbine controller serves: the spec's input columns, then its sample counter."""
    return (*columns, SCAN)


def turbine_register_map(signals: Sequence[str]) -> dict[str, Any]:
    """shared.sensor_map's default register map, the sample counter as a uint32 (a float32 is exact to 2**24 only)."""
    registers = default_register_map(signals)
    if SCAN in registers:
        registers[SCAN] = {**registers[SCAN], "dataType": "uint32"}
    return registers


def endpoint_for(protocol: str, signals: Sequence[str], *, certificate: Path | None = None,
                 private_key: Path | None = None) -> ModbusEndpoint | OpcUaEndpoint:
    """The default endpoint of `signals` (shared.sensor_map's default register map or node ids)."""
    if protocol == "modbus":
        return ModbusEndpoint(parse_register_map(turbine_register_map(signals), "controller registers"))
    if protocol == "opcua":
        return OpcUaEndpoint(parse_node_ids(default_node_ids(signals), "controller nodes"), certificate, private_key)
    raise ConfigurationError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def opcua_certificate(directory: Path, name: str, application_uri: str, *, server: bool = False,
                      days: int = 365) -> tuple[Path, Path]:
    """A self-signed OPC UA application certificate (DER) and its private key (PEM), subjectAltName = the
    application URI and localhost: `<directory>/<name>.der`, `<directory>/<name>.pem`."""
    from asyncua.crypto import cert_gen
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory.mkdir(parents=True, exist_ok=True)
    key = cert_gen.generate_private_key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    names = [x509.UniformResourceIdentifier(application_uri), x509.DNSName("localhost"),
             x509.DNSName(socket.gethostname())]
    cert = cert_gen.generate_self_signed_app_certificate(key, name, {}, names, [usage], days=days)
    cert_path, key_path = directory / f"{name}.der", directory / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


# ------------------------------------------------------------------ the process of a simulated device
def serve_turbine(controller: Controller, thing: str, home: Path, stop: threading.Event, *, speed: float = 1.0,
                  rate_hz: float = 20.0) -> int:
    """Advance the device's TurbineStream in real time (x `speed`) and serve its newest sample until `stop`;
    fault requests in the simulator's inbox are injected as they arrive. Returns the samples produced."""
    from nacelle.simulator.device import Simulator

    sim = Simulator(thing, home, lambda _topic, _payload: None, speed=speed)
    step = 1.0 / rate_hz
    produced, started, elapsed, last_inbox = 0, time.monotonic(), 0.0, 0.0
    while not stop.is_set():
        batch = sim.stream.next_batch(step)
        elapsed += step
        if batch:
            produced += len(batch)
            controller.set({**{k: _number(v) for k, v in batch[-1].items() if k not in ("seq", "ts")},
                            SCAN: float(produced % 2**32)})
        if elapsed - last_inbox >= 0.2:
            last_inbox = elapsed
            sim.poll_inbox()
        delay = started + elapsed / speed - time.monotonic()
        if delay > 0:
            stop.wait(delay)
    return produced


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nacelle.simulator.controller",
                                     description="Serve one simulated turbine's signals over Modbus TCP or OPC UA.")
    parser.add_argument("--thing", required=True)
    parser.add_argument("--home", type=Path, required=True, help="the local stack's data directory")
    parser.add_argument("--protocol", choices=PROTOCOLS, required=True)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--speed", type=float, default=1.0, help="stream seconds per wall-clock second")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s %(levelname)s controller[{args.thing}] %(message)s")
    from shared.ml.spec import default_spec

    spec = default_spec()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    controller = Controller(endpoint_for(args.protocol, turbine_signals(spec.input_columns)))
    try:
        port = controller.start(args.port)
        log.info("serving %s on 127.0.0.1:%d (%s)", args.protocol, port, ", ".join(spec.input_columns))
        produced = serve_turbine(controller, args.thing, args.home.resolve(), stop, speed=args.speed,
                                 rate_hz=spec.sampling.rate_hz)
        log.info("stopped after %d samples", produced)
    except (NacelleError, OSError) as exc:
        log.error("%s", exc)
        return 2
    finally:
        controller.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
