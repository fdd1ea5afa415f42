"""How a turbine controller exposes its signals: Modbus register maps and OPC UA node ids (docs/sensors.md).

Standard library only: the nacelle.sensors component reads with it on the device, and the simulated controllers
of the local stack (nacelle/simulator/controller.py) serve with it, so both sides encode a register the same way.

A register entry: `address` (0-based protocol address), `registerType` holding | input, `dataType` int16 | uint16 |
int32 | uint32 | int64 | uint64 | float32 | float64, `wordOrder` big (high word first) | little, `scale` and
`offset` (value = raw * scale + offset), `unit` (text, for people), and `missing` (a raw value that means "no
reading", e.g. -32768; kept as the register holds it, so a float32 sentinel such as -999.9 matches what a controller
serves). A float NaN is a missing reading too. Parsing raises ConfigurationError naming the field.
"""

from __future__ import annotations

import itertools
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import ConfigurationError

REGISTER_TYPES = ("holding", "input")
WORD_ORDERS = ("big", "little")
# dataType -> (struct code, 16-bit words)
DATA_TYPES: dict[str, tuple[str, int]] = {
    "int16": ("h", 1), "uint16": ("H", 1), "int32": ("i", 2), "uint32": ("I", 2),
    "int64": ("q", 4), "uint64": ("Q", 4), "float32": ("f", 2), "float64": ("d", 4),
}
MAX_ADDRESS = 65535
MAX_READ_WORDS = 125  # registers one Modbus read request may return
RESERVED_SIGNALS = frozenset({"seq", "ts"})  # keys every sensor sample already has
_REGISTER_KEYS = frozenset({"address", "registerType", "dataType", "wordOrder", "scale", "offset", "unit", "missing"})
_NODE_ID = re.compile(r"^(?:(?:ns=\d{1,5}|nsu=[^;]+);)?(?:i=\d{1,10}|s=.+|g=[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}"
                      r"-[0-9a-fA-F]{12}|b=[A-Za-z0-9+/=]+)$")
_SIGNAL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Register:
    """Where and how one signal sits in a Modbus device."""

    signal: str
    address: int
    register_type: str = "holding"
    data_type: str = "float32"
    word_order: str = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    missing: float | None = None  # raw value meaning "no reading", as the data type holds it

    @property
    def words(self) -> int:
        return DATA_TYPES[self.data_type][1]

    @property
    def end(self) -> int:
        """One past the last register it occupies."""
        return self.address + self.words

    def decode(self, words: Sequence[int]) -> float | None:
        """Registers (as read, 16-bit each) -> engineering value, None for a missing reading."""
        ordered = words if self.word_order == "big" else list(reversed(words))
        raw = struct.unpack(">" + DATA_TYPES[self.data_type][0], struct.pack(f">{len(ordered)}H", *ordered))[0]
        if (self.missing is not None and raw == self.missing) or (isinstance(raw, float) and not math.isfinite(raw)):
            return None
        return float(raw * self.scale + self.offset)

    def encode(self, value: float | None) -> list[int]:
        """Engineering value -> registers (what a controller serves). None or NaN: the missing value (NaN for
        floats). Raises ValueError when the value does not fit the data type."""
        code, _ = DATA_TYPES[self.data_type]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if self.missing is not None:
                raw: float = self.missing
            elif code in "fd":
                raw = math.nan
            else:
                raise ValueError(f"{self.signal}: no missing value configured for {self.data_type}")
        else:
            raw = (value - self.offset) / self.scale
        try:
            packed = struct.pack(">" + code, raw if code in "fd" else round(raw))
        except (struct.error, OverflowError) as exc:
            raise ValueError(f"{self.signal}: {value!r} does not fit a {self.data_type} register: {exc}") from exc
        words = list(struct.unpack(f">{len(packed) // 2}H", packed))
        return words if self.word_order == "big" else list(reversed(words))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address, "registerType": self.register_type,
                               "dataType": self.data_type, "wordOrder": self.word_order, "scale": self.scale,
                               "offset": self.offset, "unit": self.unit}
        if self.missing is not None:
            out["missing"] = self.missing
        return out


@dataclass(frozen=True)
class ReadBlock:
    """One read request: contiguous registers of one type, holding one or more signals."""

    register_type: str
    address: int
    count: int
    registers: tuple[Register, ...]

    def decode(self, words: Sequence[int]) -> dict[str, float | None]:
        if len(words) != self.count:
            raise ValueError(f"expected {self.count} registers from address {self.address}, got {len(words)}")
        return {r.signal: r.decode(words[r.address - self.address:r.end - self.address]) for r in self.registers}


def read_blocks(registers: Iterable[Register]) -> list[ReadBlock]:
    """The fewest read requests for a map: contiguous registers of one type, at most MAX_READ_WORDS each (a gap
    is never read across: an undefined address makes a whole request fail on many controllers)."""
    blocks: list[ReadBlock] = []
    for kind in REGISTER_TYPES:
        current: list[Register] = []
        for reg in sorted((r for r in registers if r.register_type == kind), key=lambda r: r.address):
            if current and (reg.address != current[-1].end or reg.end - current[0].address > MAX_READ_WORDS):
                blocks.append(_block(kind, current))
                current = []
            current.append(reg)
        if current:
            blocks.append(_block(kind, current))
    return blocks


def _block(kind: str, regs: list[Register]) -> ReadBlock:
    return ReadBlock(kind, regs[0].address, regs[-1].end - regs[0].address, tuple(regs))


# ------------------------------------------------------------------ parsing
def check_signal_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _SIGNAL.match(name) or name in RESERVED_SIGNALS:
        raise ConfigurationError(f"{where}: {name!r} is not a usable signal name (letters, digits, _ . -, at most "
                                 f"64 characters, not seq or ts)")
    return name


def _number(raw: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{where}.{key}: must be a finite number, got {value!r}")
    return float(value)


def parse_register(signal: str, raw: Any, where: str) -> Register:
    """One entry of a register map; ConfigurationError names `where` (e.g. `modbus.registers.rps`) and the key."""
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"{where}: must be an object with address, registerType, dataType..., got "
                                 f"{type(raw).__name__}")
    unknown = sorted(set(raw) - _REGISTER_KEYS)
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_REGISTER_KEYS)}")
    address = raw.get("address")
    if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address <= MAX_ADDRESS:
        raise ConfigurationError(f"{where}.address: must be an integer in 0..{MAX_ADDRESS}, got {address!r}")
    choices = {"registerType": (REGISTER_TYPES, "holding"), "dataType": (tuple(DATA_TYPES), "float32"),
               "wordOrder": (WORD_ORDERS, "big")}
    picked = {}
    for key, (allowed, default) in choices.items():
        value = raw.get(key, default)
        if value not in allowed:
            raise ConfigurationError(f"{where}.{key}: must be one of {', '.join(allowed)}, got {value!r}")
        picked[key] = value
    scale = _number(raw, "scale", where, 1.0)
    if scale == 0:
        raise ConfigurationError(f"{where}.scale: must not be 0")
    unit = raw.get("unit", "")
    if not isinstance(unit, str) or len(unit) > 32:
        raise ConfigurationError(f"{where}.unit: must be text of at most 32 characters, got {unit!r}")
    missing = _sentinel(raw.get("missing"), picked["dataType"], f"{where}.missing")
    reg = Register(signal, address, picked["registerType"], picked["dataType"], picked["wordOrder"], scale,
                   _number(raw, "offset", where, 0.0), unit, missing)
    if reg.end - 1 > MAX_ADDRESS:
        raise ConfigurationError(f"{where}.address: a {reg.data_type} at {address} runs past register {MAX_ADDRESS}")
    return reg


def _sentinel(value: Any, data_type: str, where: str) -> float | None:
    """The `missing` value as a register of `data_type` holds it: a reading is compared with what the controller can
    serve (a float32 holds -999.9 as -999.9000244...). A value the type cannot hold is refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{where}: must be a finite number, got {value!r}")
    code = DATA_TYPES[data_type][0]
    if code in "fd":
        return _float_sentinel(value, code, data_type, where)
    if value != int(value):
        raise ConfigurationError(f"{where}: must be an integer for a {data_type} register, got {value!r}")
    try:
        struct.pack(">" + code, int(value))
    except struct.error as exc:
        raise ConfigurationError(f"{where}: {value!r} is out of range for a {data_type} register") from exc
    return int(value)


def _float_sentinel(value: float, code: str, data_type: str, where: str) -> float:
    try:
        held: float = struct.unpack(">" + code, struct.pack(">" + code, value))[0]
    except OverflowError as exc:
        raise ConfigurationError(f"{where}: {value!r} is out of range for a {data_type} register") from exc
    # rounding to the nearest float32 is expected; losing the value (underflow to 0 or a subnormal) is not: the
    # sentinel would then match real readings
    if not math.isclose(held, value, rel_tol=2**-23):
        raise ConfigurationError(f"{where}: {value!r} cannot be held by a {data_type} register (it reads as "
                                 f"{held!r})")
    return held


def parse_register_map(raw: Any, where: str) -> tuple[Register, ...]:
    """{signal: register entry} -> registers; two signals sharing a register of one type are refused."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigurationError(f"{where}: must be a non-empty object {{signal: register}}")
    regs = [parse_register(check_signal_name(name, where), entry, f"{where}.{name}") for name, entry in raw.items()]
    for kind in REGISTER_TYPES:
        ordered = sorted((r for r in regs if r.register_type == kind), key=lambda r: r.address)
        for a, b in itertools.pairwise(ordered):
            if b.address < a.end:
                raise ConfigurationError(f"{where}.{b.signal}.address: {kind} register {b.address} overlaps "
                                         f"{a.signal} ({a.data_type} at {a.address}..{a.end - 1})")
    return tuple(regs)


def parse_node_ids(raw: Any, where: str) -> dict[str, str]:
    """{signal: node id} (`ns=2;s=Turbine.rps`, `ns=2;i=1001`, `nsu=urn:x;s=a`, `i=2258`, `g=<uuid>`, `b=<base64>`)."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigurationError(f"{where}: must be a non-empty object {{signal: node id}}")
    out: dict[str, str] = {}
    for name, node in raw.items():
        check_signal_name(name, where)
        if not isinstance(node, str) or len(node) > 512 or not _NODE_ID.match(node):
            raise ConfigurationError(f"{where}.{name}: {node!r} is not an OPC UA node id (e.g. ns=2;s=Turbine.rps "
                                     f"or ns=2;i=1001)")
        out[name] = node
    duplicated = sorted({n for n in out.values() if list(out.values()).count(n) > 1})
    if duplicated:
        raise ConfigurationError(f"{where}: node id {duplicated[0]} is mapped to more than one signal")
    return out


# ------------------------------------------------------------------ defaults (the local stack's controllers)
def default_register_map(signals: Sequence[str], start: int = 0, register_type: str = "input") -> dict[str, Any]:
    """float32 registers, big word order, one after the other from `start`: what the simulated controllers serve."""
    return {name: {"address": start + 2 * i, "registerType": register_type, "dataType": "float32",
                   "wordOrder": "big"} for i, name in enumerate(signals)}


def default_node_ids(signals: Sequence[str], namespace: int = 2, prefix: str = "Turbine") -> dict[str, str]:
    return {name: f"ns={namespace};s={prefix}.{name}" for name in signals}
