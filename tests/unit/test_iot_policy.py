"""template.yaml's AWS IoT policy, evaluated: a device connects only as its thing and reaches only its own topics.

A small evaluator of AWS IoT policy documents (no network): `Fn::Sub` with the pseudo parameters, the
`${iot:Connection.Thing.ThingName}` policy variable, resource ARNs matched with the policy wildcards (`*` any
characters, `/` included; `?` one character; MQTT's `+` and `#` are plain characters), `topic/` resources for
Publish and Receive, `topicfilter/` for Subscribe (the filter as the client sends it), `client/` for Connect, and an
explicit Deny beating any Allow. The expected table is tests/access_matrix.py, the one the local broker is tested
against (tests/integration/test_broker_identity.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

from tests.access_matrix import DEVICES, Access, Connect, access_table, connect_table, other_device
from tests.unit.test_template import as_list, resources

PARTITION, REGION, ACCOUNT = "aws", "eu-west-1", "123456789012"
PSEUDO = {"AWS::Partition": PARTITION, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT}
THING_VARIABLE = "iot:Connection.Thing.ThingName"
ARN = f"arn:{PARTITION}:iot:{REGION}:{ACCOUNT}"
STATEMENT_KEYS = {"Sid", "Effect", "Action", "Resource"}  # anything else (Condition, NotAction...) is not modelled


# ------------------------------------------------------------------ the evaluator


# What the stack's own resources resolve to (stack `nacelle`): the provisioning template's name and the role alias.
STACK_REFS = {"GreengrassProvisioningTemplate": "nacelle-greengrass"}
ROLE_ALIAS_ARN = f"{ARN}:rolealias/nacelle-greengrass-tes"
STACK_ATTRIBUTES = {("GreengrassTokenExchangeRoleAlias", "RoleAliasArn"): ROLE_ALIAS_ARN}


def _sub(text: str) -> str:
    """Fn::Sub as CloudFormation applies it: pseudo parameters and STACK_REFS replaced, `${!x}` left as the literal
    `${x}`."""
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        value = PSEUDO.get(name, STACK_REFS.get(name))
        if value is None:
            raise AssertionError(f"the evaluator cannot resolve ${{{name}}} in {text!r}")
        return value

    return re.sub(r"\$\{([^}]*)\}", one, text)


def _deployed(resource: Any) -> str:
    """A Resource entry as deployed. A reference the evaluator does not know becomes an opaque string that no
    ARN can match."""
    if isinstance(resource, str):
        return resource
    if isinstance(resource, dict) and set(resource) == {"Fn::Sub"} and isinstance(resource["Fn::Sub"], str):
        return _sub(resource["Fn::Sub"])
    if isinstance(resource, dict) and set(resource) == {"Fn::GetAtt"}:
        return STACK_ATTRIBUTES.get(tuple(resource["Fn::GetAtt"]), f"unresolved:{resource!r}")
    return f"unresolved:{resource!r}"


def _for_thing(pattern: str, thing: str) -> str:
    """The policy variable replaced by the connection's thing name; any other policy variable is refused."""
    value = pattern.replace("${" + THING_VARIABLE + "}", thing)
    if "${" in value:
        raise AssertionError(f"the evaluator models only ${{{THING_VARIABLE}}}: {pattern!r}")
    return value


def wildcard_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """AWS IoT policy wildcards: `*` any run of characters (`/` included), `?` one character, the rest literal."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL | (re.IGNORECASE if ignore_case else 0)) is not None


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]


class IotPolicy:
    """The statements of one or more policies attached to the same certificate, for the thing it belongs to."""

    def __init__(self, documents: list[dict[str, Any]], thing: str) -> None:
        self.thing = thing
        self.statements: list[Statement] = []
        for document in documents:
            for raw in as_list(document["Statement"]):
                unknown = set(raw) - STATEMENT_KEYS
                assert not unknown, f"the evaluator does not model {sorted(unknown)}: {raw}"
                assert raw["Effect"] in ("Allow", "Deny"), raw
                self.statements.append(Statement(
                    raw["Effect"], tuple(str(a) for a in as_list(raw["Action"])),
                    tuple(_for_thing(_deployed(r), thing) for r in as_list(raw["Resource"]))))

    def allows(self, action: str, arn: str) -> bool:
        """Allowed when a statement allows it and none denies it (an explicit Deny wins)."""
        matching = [s.effect for s in self.statements
                    if any(wildcard_match(a, action, ignore_case=True) for a in s.actions)
                    and any(wildcard_match(r, arn) for r in s.resources)]
        return "Allow" in matching and "Deny" not in matching

    def connect(self, client_id: str) -> bool:
        return self.allows("iot:Connect", f"{ARN}:client/{client_id}")

    def publish(self, topic: str) -> bool:
        return self.allows("iot:Publish", f"{ARN}:topic/{topic}")

    def receive(self, topic: str) -> bool:
        return self.allows("iot:Receive", f"{ARN}:topic/{topic}")

    def subscribe(self, topic_filter: str) -> bool:
        return self.allows("iot:Subscribe", f"{ARN}:topicfilter/{topic_filter}")


def device_policy(thing: str) -> IotPolicy:
    """CoreDevicePolicy, the one policy on a core device's certificate (provision-device and the provisioning
    template attach it and nothing else; tests/unit/test_device_provisioning.py), for the device's thing."""
    return IotPolicy([resources("AWS::IoT::Policy")["CoreDevicePolicy"]["Properties"]["PolicyDocument"]], thing)


def claim_policy() -> IotPolicy:
    """ClaimCertificatePolicy: a claim certificate belongs to no thing, so the thing variable resolves to nothing."""
    return IotPolicy([resources("AWS::IoT::Policy")["ClaimCertificatePolicy"]["Properties"]["PolicyDocument"]], "")


def test_only_the_two_policies_exist() -> None:
    """A new AWS::IoT::Policy needs its own evaluation here."""
    assert set(resources("AWS::IoT::Policy")) == {"CoreDevicePolicy", "ClaimCertificatePolicy"}


# ------------------------------------------------------------------ the evaluator itself


def test_the_evaluator_follows_aws_iot_policy_semantics() -> None:
    doc = {"Statement": [
        {"Effect": "Allow", "Action": "iot:*", "Resource": [f"{ARN}:topic/a/${{{THING_VARIABLE}}}/*",
                                                            f"{ARN}:topicfilter/a/+/x", f"{ARN}:client/c?"]},
        {"Effect": "Deny", "Action": "iot:Publish", "Resource": f"{ARN}:topic/a/t1/secret"},
    ]}
    policy = IotPolicy([doc], "t1")
    assert policy.publish("a/t1/b") and policy.publish("a/t1/b/c/d")  # `*` crosses `/`
    assert not policy.publish("a/t1") and not policy.publish("a/t2/b")
    assert not policy.publish("a/t1/secret") and policy.receive("a/t1/secret")  # Deny beats Allow, per action
    assert policy.subscribe("a/+/x") and not policy.subscribe("a/t1/x")  # `+` is a plain character
    assert not policy.subscribe("a/t1/b")  # topic and topicfilter resources are distinct
    assert policy.connect("c1") and not policy.connect("c") and not policy.connect("c12")  # `?`: exactly one
    assert policy.allows("IOT:PUBLISH", f"{ARN}:topic/a/t1/b")  # action names are case-insensitive
    assert not policy.allows("iot:Publish", f"{ARN}:topic/A/t1/b")  # resources are not
    with pytest.raises(AssertionError, match="does not model"):
        IotPolicy([{"Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*",
                                   "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}}]}], "t1")
    with pytest.raises(AssertionError, match="models only"):
        IotPolicy([{"Statement": [{"Effect": "Allow", "Action": "iot:*",
                                   "Resource": f"{ARN}:client/${{iot:ClientId}}"}]}], "t1")


# ------------------------------------------------------------------ the shared table, against the template


@pytest.mark.parametrize("row", [r for r in connect_table() if r.identity in DEVICES], ids=lambda r: r.id)
def test_a_device_connects_only_as_its_thing(row: Connect) -> None:
    assert device_policy(row.identity).connect(row.client_id) is row.allowed


@pytest.mark.parametrize("row", [r for r in access_table() if r.device], ids=lambda r: r.id)
def test_a_device_reaches_only_its_own_topics(row: Access) -> None:
    policy = device_policy(row.identity)
    if row.action == "publish":
        assert policy.publish(row.topic) is row.allowed
    else:
        # AWS refuses the SUBSCRIBE itself (SUBACK NOT_AUTHORIZED) when iot:Subscribe does not cover the filter,
        # and delivers a message only with iot:Receive on its topic
        assert policy.subscribe(row.topic) is row.allowed
        if not {"+", "#"} & set(row.topic):
            assert policy.receive(row.topic) is row.allowed


# ------------------------------------------------------------------ AWS-only rows


@pytest.mark.parametrize("thing", DEVICES)
def test_a_device_uses_its_own_thing_topics_and_nothing_of_another_turbine(thing: str) -> None:
    policy = device_policy(thing)
    other = other_device(thing)
    assert policy.connect(f"{thing}#2")  # the nucleus's further connections
    for topic in (f"$aws/things/{thing}/shadow/update", f"$aws/things/{thing}/jobs/start-next",
                  f"$aws/things/{thing}/greengrassv2/health/json", f"turbines/{thing}/health"):
        assert policy.publish(topic) and policy.receive(topic), topic
    for topic_filter in (f"$aws/things/{thing}/jobs/notify-next", f"$aws/things/{thing}/shadow/update/accepted",
                         f"turbines/{thing}/config"):
        assert policy.subscribe(topic_filter), topic_filter

    assert not policy.connect(f"{other}#2") and not policy.connect(f"{other}") and not policy.connect("")
    for name in (f"turbines/{other}/anomalies", f"turbines/{other}/health", f"turbines/{other}/sensors",
                 f"turbines/{other}/x/y", f"$aws/things/{other}/shadow/update", f"$aws/things/{other}/jobs/notify",
                 f"$aws/things/{other}/greengrassv2/health/json", "$aws/events/presence/connected/" + other):
        assert not policy.publish(name), name
        assert not policy.receive(name), name
        assert not policy.subscribe(name), name
    for topic_filter in (f"turbines/{other}/#", "turbines/+/anomalies", "#", f"$aws/things/{other}/#",
                         "$aws/things/+/shadow/update"):
        assert not policy.subscribe(topic_filter), topic_filter


def test_a_thing_name_prefix_reaches_no_longer_name() -> None:
    """The `/` after the thing in every resource keeps `turbine-0` out of `turbine-01`'s topics."""
    policy = device_policy("turbine-0")
    assert not policy.connect("turbine-01")
    assert not policy.publish("turbines/turbine-01/anomalies")
    assert not policy.subscribe("turbines/turbine-01/anomalies")
    assert not policy.publish("$aws/things/turbine-01/shadow/update")


# ------------------------------------------------------------------ credentials and provisioned names


@pytest.mark.parametrize("thing", ["wt-07", "twin-i-0a1b2c3d4e5f60718"])
def test_a_provisioned_device_gets_only_the_stacks_role_alias_and_its_own_topics(thing: str) -> None:
    """Names as `nacelle aws provision-device` and fleet provisioning create them; another turbine stays closed."""
    policy, other = device_policy(thing), "wt-08"
    assert policy.allows("iot:AssumeRoleWithCertificate", ROLE_ALIAS_ARN)
    assert not policy.allows("iot:AssumeRoleWithCertificate", f"{ARN}:rolealias/admin")
    assert not policy.allows("iot:Publish", ROLE_ALIAS_ARN) and not policy.allows("iot:Connect", ROLE_ALIAS_ARN)
    assert policy.connect(thing) and policy.publish(f"turbines/{thing}/anomalies")
    assert policy.subscribe(f"turbines/{thing}/config")
    for topic in (f"turbines/{other}/anomalies", f"turbines/{other}/health", f"$aws/things/{other}/shadow/update"):
        assert not policy.publish(topic) and not policy.receive(topic) and not policy.subscribe(topic), topic
    assert not policy.connect(other) and not policy.connect(f"provision-{thing}")


# ------------------------------------------------------------------ the claim certificate


TEMPLATE_TOPICS = "$aws/provisioning-templates/nacelle-greengrass/provision"


def test_a_claim_certificate_only_provisions() -> None:
    claim = claim_policy()
    assert claim.connect("provision-wt-07") and claim.connect("provision-0b6f")
    # never a turbine's, the cloud's or an empty client id: a claim cannot take over a device's MQTT session
    for client in ("wt-07", "turbine-01", "nacelle-cloud", "", "wt-07#2", "xprovision-wt-07"):
        assert not claim.connect(client), client
    for topic in ("$aws/certificates/create/json", f"{TEMPLATE_TOPICS}/json", f"{TEMPLATE_TOPICS}/json/accepted"):
        assert claim.publish(topic) and claim.receive(topic), topic
    for topic_filter in ("$aws/certificates/create/json/accepted", f"{TEMPLATE_TOPICS}/json/rejected"):
        assert claim.subscribe(topic_filter), topic_filter
    for topic in ("turbines/wt-07/anomalies", "turbines/wt-07/health", "$aws/things/wt-07/shadow/update",
                  "$aws/provisioning-templates/other-template/provision/json",
                  "$aws/certificates/create-from-csr/json", "$aws/events/presence/connected/wt-07"):
        assert not claim.publish(topic) and not claim.receive(topic) and not claim.subscribe(topic), topic
    for topic_filter in ("#", "turbines/#", "$aws/provisioning-templates/+/provision/#", "$aws/certificates/#"):
        assert not claim.subscribe(topic_filter), topic_filter
    assert not claim.allows("iot:AssumeRoleWithCertificate", ROLE_ALIAS_ARN)
    assert not claim.allows("greengrass:GetComponentVersionArtifact",
                            f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:nacelle.detector")
