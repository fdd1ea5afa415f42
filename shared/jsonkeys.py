"""JSON objects whose keys are unique. JSON leaves a repeated key to the parser (Python's keeps the last value,
others the first, or fail), so parsers of documents from outside refuse it: one document, one reading.
Standard library only: the detector and the training jobs import it too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PairsHook = Callable[[list[tuple[str, Any]]], dict[str, Any]]


def unique_keys(refuse: Callable[[str], Exception]) -> PairsHook:
    """A json.loads object_pairs_hook building each object (nested ones too) as a dict, and raising
    `refuse(key)`, the caller's own error, for a key one object gives twice."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        doc = dict(pairs)
        if len(doc) < len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise refuse(key)
                seen.add(key)
        return doc

    return hook
