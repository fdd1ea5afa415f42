"""A function's IAM statements in template.yaml, resolved with fixed stack values, and a small evaluator of
requests against them (wildcards, Deny, and the condition operators the template uses)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.unit.test_template import as_list, functions, load_template

REGION, ACCOUNT, PARTITION, STACK = "eu-west-1", "111122223333", "aws", "nacelle"
# Parameters set to a value other than their default, so that the optional paths they enable are checked too.
PARAMETER_OVERRIDES = {"NeoTarget": "ml_c5"}



# ------------------------------------------------------------------ the template's values


def parameter(name: str) -> str:
    if name in PARAMETER_OVERRIDES:
        return PARAMETER_OVERRIDES[name]
    return str(load_template()["Parameters"][name].get("Default", f"<{name}>"))


PSEUDO = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": PARTITION, "AWS::StackName": STACK,
          "AWS::URLSuffix": "amazonaws.com"}


def ref(name: str) -> str:
    """What !Ref gives, for the resource types the policies and environments name."""
    if name in PSEUDO:
        return PSEUDO[name]
    template = load_template()
    if name in template.get("Parameters", {}):
        return parameter(name)
    res = template["Resources"][name]
    kind = res["Type"]
    if kind == "AWS::S3::Bucket":
        return name.lower()
    if kind == "AWS::SNS::Topic":
        return f"arn:{PARTITION}:sns:{REGION}:{ACCOUNT}:{name}"
    if kind == "AWS::IoT::ThingGroup":
        return str(resolve(res["Properties"]["ThingGroupName"]))
    if kind == "AWS::SageMaker::ModelPackageGroup":
        return getatt(name, "ModelPackageGroupArn")
    return name  # tables, schedule groups, roles, policies: their (physical) name


def getatt(name: str, attribute: str) -> str:
    kind = load_template()["Resources"][name]["Type"]
    arns = {
        "AWS::S3::Bucket": lambda: f"arn:{PARTITION}:s3:::{ref(name)}",
        "AWS::DynamoDB::Table": lambda: f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{ref(name)}",
        "AWS::IAM::Role": lambda: f"arn:{PARTITION}:iam::{ACCOUNT}:role/{name}",
        "AWS::IoT::ThingGroup": lambda: f"arn:{PARTITION}:iot:{REGION}:{ACCOUNT}:thinggroup/{ref(name)}",
        "AWS::SageMaker::ModelPackageGroup":
            lambda: arn("sagemaker", f"model-package-group/{parameter('ModelPackageGroupName')}"),
    }
    if kind in arns:
        return arns[kind]()
    return f"arn:{PARTITION}:synthetic:{REGION}:{ACCOUNT}:{name}/{attribute}"


def substitute(text: str, names: Mapping[str, Any]) -> str:
    def one(m: re.Match[str]) -> str:
        key = m.group(1)
        if key.startswith("!"):
            return "${" + key[1:] + "}"  # ${!x} is the literal ${x}
        if key in names:
            return str(resolve(names[key]))
        if "." in key and not key.startswith("AWS::"):
            return getatt(*key.split(".", 1))
        return ref(key)
    return re.sub(r"\$\{([^}]+)\}", one, text)


def resolve(value: Any) -> Any:
    """A template value with its intrinsics evaluated (parameters at their defaults)."""
    if isinstance(value, list):
        return [resolve(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "Ref" in value:
        return ref(value["Ref"])
    if "Fn::GetAtt" in value:
        return getatt(*value["Fn::GetAtt"])
    if "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return substitute(sub, {}) if isinstance(sub, str) else substitute(sub[0], sub[1])
    if "Fn::Split" in value:
        sep, text = value["Fn::Split"]
        return str(resolve(text)).split(sep)
    if "Fn::Select" in value:
        index, items = value["Fn::Select"]
        return resolve(items)[int(index)]
    if "Fn::Join" in value:
        sep, items = value["Fn::Join"]
        return sep.join(str(v) for v in resolve(items))
    return {k: resolve(v) for k, v in value.items()}


def arn(service: str, resource: str) -> str:
    return f"arn:{PARTITION}:{service}:{REGION}:{ACCOUNT}:{resource}"


# ------------------------------------------------------------------ policy evaluation


@dataclass(frozen=True)
class Request:
    """One IAM authorisation a call needs. `context` holds the condition keys IAM would see."""

    action: str
    resource: str
    context: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __str__(self) -> str:
        keys = "".join(f" with {k}={list(v)}" for k, v in self.context)
        return f"{self.action} on {self.resource}{keys}"


def request(action: str, resource: str, context: Mapping[str, str] | None = None) -> Request:
    return Request(action, resource, tuple((k, (v,)) for k, v in (context or {}).items()))


# An action no statement can allow: the adapter itself would refuse the call (a wiring error, not IAM).
UNWIRED = "nacelle:UnwiredCall"


@dataclass(frozen=True)
class Statement:
    sid: str
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: tuple[tuple[str, str, tuple[str, ...]], ...]  # (operator, key, values)


def statements(function: str) -> list[Statement]:
    out = []
    for policy in functions()[function]["Properties"].get("Policies", []):
        if not isinstance(policy, dict):  # a managed policy or SAM policy template by name: none grant data access
            continue
        for i, st in enumerate(as_list(policy["Statement"])):
            if "NotAction" in st or "NotResource" in st:
                raise NotImplementedError(f"{function}: NotAction/NotResource are not evaluated here")
            conditions = tuple((op, key, tuple(str(v) for v in as_list(resolve(values))))
                               for op, block in st.get("Condition", {}).items() for key, values in block.items())
            out.append(Statement(st.get("Sid", f"#{i}"), st["Effect"], tuple(as_list(st["Action"])),
                                 tuple(str(r) for r in as_list(resolve(st["Resource"]))), conditions))
    return out


def wildcard(pattern: str, value: str, case: bool = True) -> bool:
    """IAM's wildcards are * and ? only (fnmatch would also read [...])."""
    pattern = pattern.replace("[", "[[]")
    return fnmatch.fnmatchcase(value, pattern) if case else fnmatch.fnmatchcase(value.lower(), pattern.lower())


OPERATORS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda want, have: want == have,
    "StringLike": wildcard,
    "ArnEquals": lambda want, have: want == have,
    "ArnLike": wildcard,
    "Bool": lambda want, have: want.lower() == have.lower(),
}


def condition_holds(operator: str, key: str, wanted: tuple[str, ...], context: Mapping[str, tuple[str, ...]]) -> bool:
    qualifier, _, base = operator.rpartition(":")
    if base not in OPERATORS or qualifier not in ("", "ForAllValues", "ForAnyValue"):
        raise NotImplementedError(f"condition operator {operator} is not evaluated here: add it")
    test, have = OPERATORS[base], context.get(key)
    if have is None:  # as IAM: an absent key satisfies ForAllValues and nothing else
        return qualifier == "ForAllValues"
    if qualifier == "ForAllValues":
        return all(any(test(w, h) for w in wanted) for h in have)
    return any(test(w, h) for w in wanted for h in have)


def applies(st: Statement, req: Request) -> bool:
    context = dict(req.context)
    return (any(wildcard(a, req.action, case=False) for a in st.actions)
            and any(wildcard(r, req.resource) for r in st.resources)
            and all(condition_holds(op, key, wanted, context) for op, key, wanted in st.conditions))


def allowing(sts: list[Statement], req: Request) -> list[Statement]:
    """The Allow statements that grant `req`; none when a Deny matches."""
    if any(st.effect == "Deny" and applies(st, req) for st in sts):
        return []
    return [st for st in sts if st.effect == "Allow" and applies(st, req)]
