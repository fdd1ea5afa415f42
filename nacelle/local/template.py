"""Read template.yaml: the local stack takes each function's handler and event patterns from it,
so local routing cannot drift from what AWS deploys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared.errors import ConfigurationError

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
CFN_TAGS = ("Ref", "Sub", "GetAtt", "If", "Join", "Select", "Split", "Equals", "Not", "And", "Or",
            "FindInMap", "ImportValue", "Base64", "Cidr", "GetAZs", "Condition", "Transform")


@dataclass(frozen=True)
class Intrinsic:
    """An unresolved CloudFormation intrinsic such as !Ref DataBucket."""

    name: str
    value: Any


class CfnLoader(yaml.SafeLoader):
    pass


def _construct(tag: str) -> Any:
    def build(loader: yaml.SafeLoader, node: yaml.Node) -> Intrinsic:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        return Intrinsic(tag, value)

    return build


for _tag in CFN_TAGS:
    CfnLoader.add_constructor(f"!{_tag}", _construct(_tag))


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        return dict(yaml.load(fh, Loader=CfnLoader))


@dataclass(frozen=True)
class Route:
    function: str  # logical id, e.g. DataArrivalFunction
    module: str  # services.data_arrival.app
    rule: str  # the event's name in the template
    pattern: dict[str, Any]


def resolve(value: Any, refs: dict[str, str]) -> Any:
    """Replace !Ref of known logical ids (e.g. DataBucket -> the local bucket name)."""
    if isinstance(value, Intrinsic):
        if value.name == "Ref" and value.value in refs:
            return refs[value.value]
        raise ConfigurationError(f"the local stack cannot resolve !{value.name} {value.value!r} in an event pattern")
    if isinstance(value, dict):
        return {k: resolve(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, refs) for v in value]
    return value


def function_module(props: dict[str, Any]) -> str:
    code_uri = str(props.get("CodeUri", "")).strip("/")
    handler = str(props.get("Handler", ""))
    module, _, attr = handler.rpartition(".")
    if attr != "handler" or not code_uri.startswith("services/"):
        raise ConfigurationError(f"unexpected function code {code_uri}/{handler}")
    return f"{code_uri.replace('/', '.')}.{module}"


def routes(template: dict[str, Any], refs: dict[str, str]) -> list[Route]:
    """Every EventBridgeRule event of every function (IoT rules are read elsewhere)."""
    out = []
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]
        module = function_module(props)
        for name, event in (props.get("Events") or {}).items():
            if event.get("Type") == "EventBridgeRule":
                out.append(Route(logical_id, module, name, resolve(event["Properties"]["Pattern"], refs)))
    return out
