"""Documents whose mappings name each key once. JSON and YAML leave a repeated key to the parser (Python's
keep the last value, others the first, or fail), so parsers of documents from outside refuse it: one
document, one reading. Standard library only (PyYAML imported when a YAML document is read): the detector and
the training jobs import it too."""

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


def load_yaml(text: str) -> Any:
    """yaml.safe_load, except that a key one mapping gives twice raises yaml.YAMLError naming the key and its
    line (yaml.safe_load keeps the last value)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: the SafeLoader's own error follows
                    break
                if repeated:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader
