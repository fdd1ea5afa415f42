"""template.yaml's token exchange role, evaluated: the AWS credentials a core device gets through its role alias write
captured data under its own `raw/capture/<thing>/` only, and read, list or delete none of it.

The expected table is tests/access_matrix.py's capture_table, the one the local capture gateway is tested against
(tests/unit/test_capture_gateway.py). IAM evaluation as AWS documents it for these statements: `${DataBucket.Arn}`
resolved, the `${credentials-iot:ThingName}` policy variable (the thing whose certificate obtained the credentials)
replaced, resource wildcards `*` (any run of characters, `/` included) and `?`, an explicit Deny beating any Allow.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.access_matrix import DEVICES, CaptureUpload, capture_table, other_device
from tests.unit.test_iot_policy import wildcard_match
from tests.unit.test_template import as_list, resources

BUCKET_ARN = "arn:aws:s3:::nacelle-data-123456789012"
ROLE = "GreengrassTokenExchangeRole"
THING_VARIABLE = "credentials-iot:ThingName"
STATEMENT_KEYS = {"Sid", "Effect", "Action", "Resource", "Condition"}
CONDITIONS = {"Null": {"s3:if-none-match"}}  # modelled; any other condition is refused


def _resource(value: Any, thing: str) -> str:
    if value == {"Fn::GetAtt": ["DataBucket", "Arn"]}:
        return BUCKET_ARN
    if isinstance(value, dict) and set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name == "DataBucket.Arn":
                return BUCKET_ARN
            if name == "!" + THING_VARIABLE:
                return thing  # deployed as the policy variable, which IAM replaces with the caller's thing
            raise AssertionError(f"the evaluator cannot resolve ${{{name}}} in {value}")

        return re.sub(r"\$\{([^}]*)\}", one, value["Fn::Sub"])
    if isinstance(value, str):
        assert "${" not in value, f"the evaluator models only ${{{THING_VARIABLE}}}: {value}"
        return value
    return f"unresolved:{value!r}"


def _condition_holds(condition: dict[str, Any], keys: set[str]) -> bool:
    """`Null` as IAM evaluates it: {"key": "false"} holds when the request carries the key, "true" when it does not.
    `keys`: the condition keys the request carries (for S3, the If-None-Match header is s3:if-none-match)."""
    for operator, tests in condition.items():
        assert operator in CONDITIONS and set(tests) <= CONDITIONS[operator], f"not modelled: {operator} {tests}"
        for key, value in tests.items():
            assert value in ("true", "false"), f"Null takes 'true' or 'false', got {value!r}"
            if (key in keys) != (value == "false"):
                return False
    return True


class RolePolicy:
    """Every inline policy of the role, for the credentials of `thing`."""

    def __init__(self, role: dict[str, Any], thing: str) -> None:
        self.statements = []
        for policy in as_list(role["Properties"].get("Policies", [])):
            for raw in as_list(policy["PolicyDocument"]["Statement"]):
                assert set(raw) <= STATEMENT_KEYS, f"the evaluator does not model {sorted(set(raw) - STATEMENT_KEYS)}"
                self.statements.append((raw["Effect"], [str(a) for a in as_list(raw["Action"])],
                                        [_resource(r, thing) for r in as_list(raw["Resource"])],
                                        raw.get("Condition", {})))
        assert not role["Properties"].get("ManagedPolicyArns"), "a managed policy would escape this evaluation"

    def allows(self, action: str, arn: str, keys: frozenset[str] = frozenset({"s3:if-none-match"})) -> bool:
        matching = [effect for effect, actions, arns, condition in self.statements
                    if any(wildcard_match(a, action, ignore_case=True) for a in actions)
                    and any(wildcard_match(r, arn) for r in arns) and _condition_holds(condition, set(keys))]
        return "Allow" in matching and "Deny" not in matching


def role_policy(thing: str) -> RolePolicy:
    return RolePolicy(resources("AWS::IAM::Role")[ROLE], thing)


@pytest.mark.parametrize("row", capture_table(), ids=lambda r: r.id)
def test_a_device_writes_captured_data_under_its_own_thing_only(row: CaptureUpload) -> None:
    assert role_policy(row.identity).allows("s3:PutObject", f"{BUCKET_ARN}/{row.key}") is row.allowed


@pytest.mark.parametrize("thing", DEVICES)
def test_a_device_only_creates_captured_files_and_never_replaces_one(thing: str) -> None:
    arn = f"{BUCKET_ARN}/raw/capture/{thing}/x.csv"
    assert role_policy(thing).allows("s3:PutObject", arn, frozenset({"s3:if-none-match"}))  # If-None-Match: *
    assert not role_policy(thing).allows("s3:PutObject", arn, frozenset())  # a plain PUT would overwrite


@pytest.mark.parametrize("thing", DEVICES)
def test_a_device_reads_lists_and_deletes_no_captured_data(thing: str) -> None:
    policy = role_policy(thing)
    for owner in (thing, other_device(thing)):
        arn = f"{BUCKET_ARN}/raw/capture/{owner}/x.csv"
        for action in ("s3:GetObject", "s3:DeleteObject", "s3:PutObjectAcl", "s3:PutObjectTagging",
                       "s3:GetObjectVersion"):
            assert not policy.allows(action, arn), (action, arn)
    assert not policy.allows("s3:ListBucket", BUCKET_ARN)
    assert not policy.allows("s3:PutObject", f"{BUCKET_ARN}/raw/capture/x.csv")  # no thing, no prefix


def test_only_the_iot_credentials_provider_assumes_the_role() -> None:
    trust = resources("AWS::IAM::Role")[ROLE]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [(s["Effect"], s["Principal"], s["Action"]) for s in trust] == \
        [("Allow", {"Service": "credentials.iot.amazonaws.com"}, "sts:AssumeRole")]


def test_every_aws_deployment_tells_the_detector_which_bucket_to_upload_to(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.rollout_wiring import RolloutSettings, rollout_deps
    from shared.usecases.rollout_components import deployment_components

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")  # the adapters' clients are built lazily, never called
    settings = RolloutSettings.from_env({
        "NACELLE_DATA_BUCKET": "nacelle-data-1", "NACELLE_STATE_TABLE": "state", "NACELLE_ACCOUNT_ID": "1",
        "NACELLE_APPROVALS_TOPIC_ARN": "arn:aws:sns:eu-west-1:1:approvals", "NACELLE_DETECTOR_VERSION": "1.0.0",
        "NACELLE_CANARY_GROUP": "canary", "NACELLE_FLEET_GROUP": "fleet", "NACELLE_EVENT_BUS_ARN": "arn:bus",
        "NACELLE_SCHEDULER_ROLE_ARN": "arn:role"})
    components = deployment_components(7, "1.0.0", rollout_deps(settings).detector_configuration)
    merge = json.loads(components["nacelle.detector"]["configurationUpdate"]["merge"])
    assert merge == {"capture": {"bucket": "nacelle-data-1"}, "model": {"version": "7.0.0"}}
