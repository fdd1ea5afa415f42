"""What every use case returns: the action taken, a line for the log, and what the handler reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Outcome:
    action: str  # e.g. accepted | quarantined | ignored | duplicate | started | new | updated | failed | done
    detail: str
    data: dict[str, Any] = field(default_factory=dict)  # merged into the handler's result
    sent: tuple[str, ...] = ()  # "<kind>:<alert id>" of every alert notification published by this call
