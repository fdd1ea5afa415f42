"""Modbus TCP source (pymodbus): one read request per block of contiguous registers of one type.

The register map (shared/sensor_map.py) says where each signal sits and how to decode it. pymodbus' own retries
and reconnects are off: the sampler owns timeouts and the reconnect backoff. An exception response (illegal
address, device busy...) fails the read but keeps the connection; an I/O error or a timeout drops it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from shared.sensor_map import ReadBlock, read_blocks

from .config import ModbusSettings
from .sampler import SourceError

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # it logs every failed frame; the sampler reports reads

FUNCTION_CODES = {"holding": 3, "input": 4}  # read holding registers, read input registers
EXCEPTION_CODES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "device failure",
                   5: "acknowledge", 6: "device busy", 10: "gateway path unavailable",
                   11: "gateway target failed to respond"}


class ModbusSource:
    kind = "modbus"

    def __init__(self, settings: ModbusSettings, client_factory: Callable[..., Any] = AsyncModbusTcpClient) -> None:
        self.settings = settings
        self.endpoint = settings.endpoint
        self.blocks = read_blocks(settings.registers)
        self._factory = client_factory
        self._client: Any = None
        self.connect_timeout_s = max(1.0, 2 * settings.timeout_s)  # one TCP connect

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    async def connect(self) -> None:
        s = self.settings
        client = self._factory(s.host, port=s.port, timeout=s.timeout_s, retries=0, reconnect_delay=0,
                               name=f"nacelle-sensors-{s.host}")
        started = time.monotonic()
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:
            client.close()
            raise SourceError(f"connection refused or unreachable: {exc}",
                              refused=isinstance(exc, ConnectionRefusedError)) from exc
        if not ok:  # pymodbus says only that it failed: refused when it failed at once
            client.close()
            refused = time.monotonic() - started < min(0.05, s.timeout_s / 2)
            raise SourceError("connection refused" if refused else "no connection (host unreachable or no answer)",
                              refused=refused)
        await self.close()
        self._client = client

    async def read(self) -> Mapping[str, float | None]:
        client = self._client
        if client is None:
            raise SourceError("not connected")
        values: dict[str, float | None] = {}
        for block in self.blocks:
            call = client.read_holding_registers if block.register_type == "holding" else client.read_input_registers
            try:
                response = await call(block.address, count=block.count, device_id=self.settings.unit_id)
            except ModbusException as exc:
                raise SourceError(f"{block.register_type} registers {block.address}..{block.address + block.count - 1}"
                                  f": {exc}") from exc
            if response.isError():
                code = getattr(response, "exception_code", 0)
                raise SourceError(f"unit {self.settings.unit_id} answered {block.register_type} registers "
                                  f"{block.address}..{block.address + block.count - 1} with exception {code} "
                                  f"({EXCEPTION_CODES.get(code, 'unknown')})", reconnect=False)
            try:
                values.update(_decode(block, response))
            except ValueError as exc:
                raise SourceError(f"unit {self.settings.unit_id}: {exc}", reconnect=False) from exc
        return values

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _decode(block: ReadBlock, response: Any) -> dict[str, float | None]:
    """The block's values from a response to its request; ValueError when the response answers another request
    (pymodbus matches responses by transaction id only, so registers of another type would pass as these)."""
    expected = FUNCTION_CODES[block.register_type]
    if response.function_code != expected:
        raise ValueError(f"expected function code {expected} for {block.register_type} registers "
                         f"{block.address}..{block.address + block.count - 1}, got {response.function_code}")
    return block.decode(response.registers)
