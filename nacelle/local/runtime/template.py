"""Read template.yaml: the local stack takes each function's handler and event patterns from it,
so local routing cannot drift from what AWS deploys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared.errors import ConfigurationError

TEMPLATE = Path(__file__).resolve().parents[3] / "template.yaml"
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


# -- IoT topic rules and schedules (the local rule engine and the periodic checks) -------------------
IOT_SOURCE = "nacelle.iot"  # the source of the envelopes the local rule engine puts on the bus


@dataclass(frozen=True)
class TopicRule:
    rule: str  # logical id, e.g. AnomalyRule (the bus envelope's detail-type)
    sql: str
    function: str  # logical id of the function its Lambda action invokes


def _getatt_arn(value: Any, where: str) -> str:
    """The logical id X of `!GetAtt X.Arn` (either YAML form)."""
    if isinstance(value, Intrinsic) and value.name == "GetAtt":
        parts = value.value.split(".", 1) if isinstance(value.value, str) else list(value.value)
        if len(parts) == 2 and parts[1] == "Arn":
            return str(parts[0])
    raise ConfigurationError(f"{where}: the Lambda action's FunctionArn must be !GetAtt <Function>.Arn, got {value!r}")


def topic_rules(template: dict[str, Any]) -> list[TopicRule]:
    """Every AWS::IoT::TopicRule with a Lambda action: (logical id, SQL, the function it invokes)."""
    out = []
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::IoT::TopicRule":
            continue
        payload = resource["Properties"]["TopicRulePayload"]
        sql = payload.get("Sql")
        if not isinstance(sql, str):
            raise ConfigurationError(f"template.yaml {logical_id}: TopicRulePayload.Sql must be a plain string")
        for action in payload.get("Actions") or []:
            if "Lambda" in action:
                function = _getatt_arn(action["Lambda"].get("FunctionArn"), f"template.yaml {logical_id}")
                out.append(TopicRule(logical_id, sql, function))
    return out


def function_modules(template: dict[str, Any]) -> dict[str, str]:
    """Function logical id -> its handler module (services.<name>.app)."""
    return {logical_id: function_module(resource["Properties"])
            for logical_id, resource in template["Resources"].items()
            if resource.get("Type") == "AWS::Serverless::Function"}


def scheduled_rule_arn(function: str, event: str, region: str, account: str) -> str:
    """The ARN of the rule SAM generates for a Schedule event (logical id <function><event>)."""
    return f"arn:aws:events:{region}:{account}:rule/{function}{event}"


def schedule_routes(template: dict[str, Any], region: str, account: str) -> list[Route]:
    """Every Schedule event of every function, as a route matching the `Scheduled Event` its rule puts."""
    out = []
    for logical_id, module in function_modules(template).items():
        events = template["Resources"][logical_id]["Properties"].get("Events") or {}
        for name, event in events.items():
            if event.get("Type") == "Schedule":
                pattern = {"source": ["aws.events"], "detail-type": ["Scheduled Event"],
                           "resources": [scheduled_rule_arn(logical_id, name, region, account)]}
                out.append(Route(logical_id, module, name, pattern))
    return out
