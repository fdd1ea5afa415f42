"""template.yaml is the deployment contract.

It lints clean; every Handler imports and finds its settings in the function's environment; IAM is least
privilege; storage is private and encrypted; every function is traced and has retries and an on-failure
destination; and the EventBridge patterns are the ones the services parse.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
TWIN_TEMPLATE = ROOT / "deploy" / "twin-fleet.yaml"
SAMCONFIG = ROOT / "samconfig.toml"

# Actions that support no resource-level permission, so `Resource: "*"` is the only option. Each entry:
# action -> (why, the condition key that must narrow the statement instead, or None).
ALLOW_STAR_RESOURCE: dict[str, tuple[str, str | None]] = {
    # A registry login token: the API takes no resource (image pulls themselves are scoped to repositories).
    "ecr:GetAuthorizationToken": ("returns a registry login token; no resource type", None),
    # CloudWatch metrics are not resources; the statement must pin the namespace.
    "cloudwatch:PutMetricData": ("metrics are not resources; scoped by namespace", "cloudwatch:namespace"),
    # X-Ray's write APIs (what AWSXrayWriteOnlyAccess grants for Tracing: Active) take no resource.
    "xray:PutTraceSegments": ("X-Ray write API; no resource type", None),
    "xray:PutTelemetryRecords": ("X-Ray write API; no resource type", None),
    # Greengrass v2 CreateDeployment has no resource type; the IoT job/thing-group actions it depends on are scoped.
    "greengrass:CreateDeployment": ("no resource type; its dependent iot:* actions are scoped", None),
}

# Managed policies and SAM policy templates that grant a whole service (or everything).
FORBIDDEN_POLICY_NAME = re.compile(r"FullAccess|AdministratorAccess|PowerUserAccess")

# Set by the Lambda runtime itself; a Settings field may read them without the template setting them.
LAMBDA_RUNTIME_ENV = frozenset({
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_EXECUTION_ENV", "LAMBDA_TASK_ROOT", "_X_AMZN_TRACE_ID",
})

# Where the domain and the Lambda composition roots live; only shared/settings.py may read the environment.
ENV_READERS_ALLOWED = frozenset({ROOT / "shared" / "settings.py"})


# ------------------------------------------------------------------ loading


class CfnLoader(yaml.SafeLoader):
    """A YAML loader that keeps CloudFormation short tags as their long form (`!Ref X` -> {"Ref": "X"})."""


def _construct_intrinsic(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        raise yaml.constructor.ConstructorError(None, None, f"unexpected node for !{suffix}", node.start_mark)
    return {name: value}


CfnLoader.add_multi_constructor("!", _construct_intrinsic)


@cache
def load_template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(encoding="utf-8"), Loader=CfnLoader)  # a SafeLoader subclass


def resources(type_: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in load_template()["Resources"].items() if res["Type"] == type_}


def functions() -> dict[str, dict[str, Any]]:
    return resources("AWS::Serverless::Function")


def global_function() -> dict[str, Any]:
    return load_template().get("Globals", {}).get("Function", {})


def function_env(props: dict[str, Any]) -> dict[str, Any]:
    """Globals and function variables, merged the way SAM merges them."""
    merged = dict(global_function().get("Environment", {}).get("Variables", {}))
    merged.update(props.get("Environment", {}).get("Variables", {}))
    return merged


def function_setting(props: dict[str, Any], key: str) -> Any:
    return props.get(key, global_function().get(key))


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def ref_target(value: Any) -> str | None:
    """The logical id behind {"Ref": X} or {"Fn::GetAtt": [X, ...]}, else None."""
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return str(value["Fn::GetAtt"][0])
    return None


def eventbridge_events(props: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: ev["Properties"] for name, ev in props.get("Events", {}).items() if ev["Type"] == "EventBridgeRule"}


# ------------------------------------------------------------------ 1. cfn-lint


def test_cfn_lint_is_clean() -> None:
    # cfn-lint has no `python -m` entry point; run its console script's main() under this interpreter. One run for
    # both templates: the optional twin fleet (deploy/twin-fleet.yaml, tests/unit/test_twin_fleet.py) too.
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())", "--", str(TEMPLATE),
         str(TWIN_TEMPLATE)],
        capture_output=True, text=True, cwd=ROOT, timeout=240, check=False,
    )
    assert proc.returncode == 0, f"cfn-lint exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"


# ------------------------------------------------------------------ 2. handlers, settings, environment


@pytest.mark.parametrize("logical_id", sorted(functions()))
def test_handler_imports_and_its_settings_are_set(logical_id: str) -> None:
    from shared.settings import Settings

    props = functions()[logical_id]["Properties"]
    match = re.fullmatch(r"services/([a-z_][a-z0-9_]*)/?", str(props["CodeUri"]))
    assert match, f"{logical_id}: CodeUri {props['CodeUri']!r} is not services/<name>/"
    assert props["Handler"] == "app.handler", f"{logical_id}: Handler must be app.handler"
    name = match.group(1)
    app = ROOT / "services" / name / "app.py"
    # Deliberately a failure, not a skip: a function in the template without its code is a broken deploy.
    assert app.is_file(), f"{logical_id}: {app.relative_to(ROOT)} does not exist"

    module = importlib.import_module(f"services.{name}.app")
    assert callable(getattr(module, "handler", None)), f"services.{name}.app.handler is not callable"
    assert callable(getattr(module, "handle", None)), f"services.{name}.app.handle is not callable"
    settings = getattr(module, "SETTINGS", None)
    assert isinstance(settings, type) and issubclass(settings, Settings), (
        f"services.{name}.app.SETTINGS must be a shared.settings.Settings subclass, got {settings!r}")

    env = function_env(props)
    missing = sorted(v for v in settings.env_vars() if v not in env and v not in LAMBDA_RUNTIME_ENV)
    assert not missing, f"{logical_id}: {settings.__name__} reads {missing}, which template.yaml does not set"


def _reads_environment(tree: ast.AST) -> Iterator[int]:
    names = ("environ", "environb", "getenv")
    for node in ast.walk(tree):
        attribute = (isinstance(node, ast.Attribute) and node.attr in names
                     and isinstance(node.value, ast.Name) and node.value.id == "os")
        imported = (isinstance(node, ast.ImportFrom) and node.module == "os"
                    and any(a.name in names for a in node.names))
        if attribute or imported:
            yield getattr(node, "lineno", 0)


def test_only_settings_reads_the_environment() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for folder in ("shared", "services")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path not in ENV_READERS_ALLOWED
        for line in _reads_environment(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    ]
    assert not offenders, f"read the environment through shared.settings instead: {offenders}"


# ------------------------------------------------------------------ 3. IAM


def policy_statements() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, statement) for every identity policy statement written in the template."""
    for name, res in load_template()["Resources"].items():
        props = res.get("Properties", {})
        documents: list[tuple[str, Any]] = []
        if res["Type"] == "AWS::IAM::Role":
            documents += [(f"{name}/{p.get('PolicyName')}", p["PolicyDocument"]) for p in props.get("Policies", [])]
        elif res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents.append((name, props["PolicyDocument"]))
        elif res["Type"].startswith("AWS::Serverless::"):
            documents += [(f"{name}/Policies[{i}]", p) for i, p in enumerate(as_list(props.get("Policies", [])))
                          if isinstance(p, dict) and "Statement" in p]
        for where, doc in documents:
            for i, statement in enumerate(as_list(doc["Statement"])):
                yield f"{where}/Statement[{statement.get('Sid', i)}]", statement


def policy_names() -> Iterator[tuple[str, str]]:
    """(where, name) for managed policies and SAM policy templates attached in the template."""
    for name, res in load_template()["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] in ("AWS::IAM::Role", "AWS::IAM::User", "AWS::IAM::Group"):
            for arn in props.get("ManagedPolicyArns", []):
                yield name, str(arn)
        if res["Type"].startswith("AWS::Serverless::"):
            for policy in as_list(props.get("Policies", [])):
                if isinstance(policy, str):
                    yield name, policy
                elif isinstance(policy, dict) and "Statement" not in policy:
                    yield from ((name, str(key)) for key in policy)  # SAM policy templates


def resource_strings(value: Any) -> list[str]:
    """Every string a Resource may become, with ${...} and references replaced by opaque placeholders."""
    if isinstance(value, list):
        return [s for item in value for s in resource_strings(item)]
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Fn::Sub":
            text = arg if isinstance(arg, str) else arg[0]
            return [re.sub(r"\$\{[^}]*\}", "VAR", text)]
        if fn == "Fn::Join":
            parts = [resource_strings(p) for p in arg[1]]
            return [arg[0].join(p[0] if p else "VAR" for p in parts)]
        if fn == "Fn::If":
            return resource_strings(arg[1]) + resource_strings(arg[2])
    return ["REF"]  # Ref / GetAtt / Select...: one named resource


def is_wildcard_resource(resource: str) -> bool:
    """`*`, or an ARN whose resource part is missing or starts with `*` (no resource-type path)."""
    if resource == "*":
        return True
    parts = resource.split(":", 5)
    return resource.startswith("arn:") and len(parts) == 6 and (parts[5] == "" or parts[5].startswith("*"))


def test_iam_statements_name_actions_and_resources() -> None:
    problems: list[str] = []
    for where, statement in policy_statements():
        if statement.get("Effect") != "Allow":
            continue  # a broad Deny only narrows
        if "NotAction" in statement or "NotResource" in statement:
            problems.append(f"{where}: Allow with NotAction/NotResource")
            continue
        actions = [str(a) for a in as_list(statement.get("Action", []))]
        problems += [f"{where}: wildcard action {a!r}" for a in actions if "*" in a]
        wild = [r for r in resource_strings(statement.get("Resource")) if is_wildcard_resource(r)]
        if not wild:
            continue
        conditions = {key for block in statement.get("Condition", {}).values() for key in block}
        for action in actions:
            if action not in ALLOW_STAR_RESOURCE:
                problems.append(f"{where}: {action} on {wild} (not in ALLOW_STAR_RESOURCE)")
            elif (key := ALLOW_STAR_RESOURCE[action][1]) and key not in conditions:
                problems.append(f"{where}: {action} on {wild} needs a {key} condition")
    assert not problems, "\n".join(problems)


def test_no_full_access_policies() -> None:
    broad = [f"{where}: {name}" for where, name in policy_names() if FORBIDDEN_POLICY_NAME.search(name)]
    assert not broad, f"full-access policies attached: {broad}"


def test_pass_role_is_pinned_to_a_service() -> None:
    for where, statement in policy_statements():
        if "iam:PassRole" in as_list(statement.get("Action", [])):
            passed = statement.get("Condition", {}).get("StringEquals", {}).get("iam:PassedToService")
            assert passed, f"{where}: iam:PassRole without an iam:PassedToService condition"


def test_the_allow_list_is_tested() -> None:
    """The checker itself: a bare `*`, a service-wide ARN and a wildcard action are caught."""
    assert is_wildcard_resource("*")
    assert is_wildcard_resource("arn:aws:s3:::*")
    def sub(text: str) -> str:
        return resource_strings({"Fn::Sub": text})[0]

    account = "arn:${AWS::Partition}:${Service}:${AWS::Region}:${AWS::AccountId}:"
    assert is_wildcard_resource(sub(account + "*"))
    assert not is_wildcard_resource(sub(account + "log-group:/aws/sagemaker/TrainingJobs:*"))
    assert not is_wildcard_resource(sub(account + "training-job/nacelle-*"))
    assert not is_wildcard_resource(sub("${DataBucket.Arn}/raw/*"))
    assert all(":" in action and "*" not in action for action in ALLOW_STAR_RESOURCE)


# ------------------------------------------------------------------ 4. storage, encryption, failure handling


def _bucket_policies(bucket: str) -> list[dict[str, Any]]:
    return [res["Properties"]["PolicyDocument"] for res in resources("AWS::S3::BucketPolicy").values()
            if ref_target(res["Properties"]["Bucket"]) == bucket]


def _denies_insecure_transport(document: dict[str, Any]) -> bool:
    for statement in as_list(document["Statement"]):
        secure = statement.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")
        if (statement.get("Effect") == "Deny" and str(secure).lower() == "false"
                and statement.get("Principal") in ("*", {"AWS": "*"})
                and {"s3:*"} <= set(as_list(statement.get("Action")))
                and len(as_list(statement.get("Resource"))) >= 2):  # the bucket and its objects
            return True
    return False


@pytest.mark.parametrize("bucket", sorted(resources("AWS::S3::Bucket")))
def test_bucket_is_private_encrypted_versioned_and_tls_only(bucket: str) -> None:
    props = resources("AWS::S3::Bucket")[bucket]["Properties"]
    block = props.get("PublicAccessBlockConfiguration", {})
    assert all(block.get(k) is True for k in (
        "BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")), block
    assert props.get("OwnershipControls", {}).get("Rules") == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    rules = props.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [])
    assert any(r["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms", "aws:kms:dsse")
               for r in rules), rules
    assert props.get("VersioningConfiguration", {}).get("Status") == "Enabled"
    assert any(_denies_insecure_transport(doc) for doc in _bucket_policies(bucket)), f"{bucket}: no TLS-only policy"


def test_data_bucket_sends_eventbridge_notifications() -> None:
    props = resources("AWS::S3::Bucket")["DataBucket"]["Properties"]
    assert props["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True


def test_topics_queues_and_tables_are_encrypted() -> None:
    topics = resources("AWS::SNS::Topic")
    assert {"AlertsTopic", "ApprovalsTopic", "DataQualityTopic"} <= set(topics)
    plain_topics = [name for name, t in topics.items() if not t["Properties"].get("KmsMasterKeyId")]
    assert not plain_topics, f"unencrypted topics: {plain_topics}"
    queues = resources("AWS::SQS::Queue")
    assert queues
    plain_queues = [name for name, q in queues.items() if not (
        q["Properties"].get("SqsManagedSseEnabled") is True or q["Properties"].get("KmsMasterKeyId"))]
    assert not plain_queues, f"unencrypted queues: {plain_queues}"
    for name, table in resources("AWS::DynamoDB::Table").items():
        assert table["Properties"].get("SSESpecification", {}).get("SSEEnabled") is True, name
        assert table["Properties"]["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True, name


@pytest.mark.parametrize("logical_id", sorted(functions()))
def test_function_is_traced_retried_and_dead_lettered(logical_id: str) -> None:
    props = functions()[logical_id]["Properties"]
    assert function_setting(props, "Tracing") == "Active", "X-Ray tracing is not Active"

    invoke = props.get("EventInvokeConfig", {})
    assert isinstance(invoke.get("MaximumRetryAttempts"), int), "EventInvokeConfig.MaximumRetryAttempts"
    assert isinstance(invoke.get("MaximumEventAgeInSeconds"), int), "EventInvokeConfig.MaximumEventAgeInSeconds"
    on_failure = invoke.get("DestinationConfig", {}).get("OnFailure", {})
    assert on_failure.get("Type") and on_failure.get("Destination"), "no on-failure destination"

    # Rule -> Lambda delivery: retried, then dead-lettered to a queue whose policy admits that rule.
    queue_policies = resources("AWS::SQS::QueuePolicy").values()
    for event, rule in eventbridge_events(props).items():
        assert rule.get("RetryPolicy"), f"{event}: no RetryPolicy"
        dlq = ref_target(rule.get("DeadLetterConfig", {}).get("Arn"))
        assert dlq in resources("AWS::SQS::Queue"), f"{event}: DeadLetterConfig.Arn is not a queue of this stack"
        admitted = {
            ref_target(arn)
            for qp in queue_policies if dlq in {ref_target(q) for q in qp["Properties"]["Queues"]}
            for st in as_list(qp["Properties"]["PolicyDocument"]["Statement"]) if st.get("Effect") == "Allow"
            for arn in as_list(st.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn", []))
        }
        # SAM names the generated AWS::Events::Rule <function logical id><event name>.
        assert f"{logical_id}{event}" in admitted, f"{event}: the queue policy of {dlq} does not admit this rule"

    log_group = ref_target(props.get("LoggingConfig", {}).get("LogGroup"))
    assert log_group in resources("AWS::Logs::LogGroup"), "no log group of this stack"
    assert resources("AWS::Logs::LogGroup")[log_group]["Properties"].get("RetentionInDays"), "log retention"


# ------------------------------------------------------------------ 5. event patterns


EXPECTED_PATTERNS: dict[tuple[str, str], dict[str, Any]] = {
    ("DataArrivalFunction", "ObjectCreated"): {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [{"Ref": "DataBucket"}]},
                   "object": {"key": [{"prefix": "raw/"}, {"prefix": "labels/"}]}},
    },
    ("DataArrivalFunction", "RetrainCheck"): {
        "source": ["nacelle"],
        "detail-type": ["Nacelle Retrain Check"],
    },
    ("TrainingCompletedFunction", "TrainingJobStateChange"): {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Training Job State Change"],
        "detail": {
            "TrainingJobName": [{"prefix": "nacelle-"}],
            "TrainingJobStatus": ["Completed", "Failed", "Stopped"],
        },
    },
    ("ModelApprovedFunction", "ModelApproved"): {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Model Package State Change"],
        "detail": {"ModelPackageGroupName": [{"Ref": "ModelPackageGroupName"}], "ModelApprovalStatus": ["Approved"]},
    },
    ("ModelApprovedFunction", "NeoOutput"): {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [{"Ref": "DataBucket"}]},
                   "object": {"key": [{"wildcard": "compiled/*/neo/output/*"}]}},
    },
    ("CompilationCompletedFunction", "ManifestCreated"): {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [{"Ref": "DataBucket"}]},
                   "object": {"key": [{"wildcard": "compiled/*/*/manifest.json"}]}},
    },
    ("DeploymentStatusFunction", "DeploymentStatusChange"): {
        "source": ["aws.greengrass"],
        "detail-type": ["Greengrass V2 Effective Deployment Status Change"],
    },
    ("DeploymentStatusFunction", "RolloutCheck"): {
        "source": ["nacelle"],
        "detail-type": ["Nacelle Rollout Check"],
    },
    ("ModelApprovedFunction", "CompileJobStateChange"): {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Processing Job State Change"],
        "detail": {
            "ProcessingJobName": [{"prefix": "nacelle-compile-"}],
            "ProcessingJobStatus": ["Completed", "Failed", "Stopped"],
        },
    },
}


def test_event_patterns_are_what_the_services_expect() -> None:
    actual = {(fn, event): rule["Pattern"]
              for fn, res in functions().items() for event, rule in eventbridge_events(res["Properties"]).items()}
    assert actual == EXPECTED_PATTERNS, "template.yaml routes events the services do not expect (or the reverse)"


def test_event_patterns_match_the_shared_event_names() -> None:
    """The detail-types the services dispatch on (shared.events) are the ones the rules route."""
    events = importlib.import_module("shared.events")
    routed = {dt for pattern in EXPECTED_PATTERNS.values() for dt in pattern["detail-type"]}
    assert {events.OBJECT_CREATED, events.RETRAIN_CHECK, events.TRAINING_STATE_CHANGE,
            events.MODEL_PACKAGE_STATE_CHANGE, events.PROCESSING_STATE_CHANGE, events.DEPLOYMENT_STATUS_CHANGE,
            events.ROLLOUT_CHECK} == routed
    assert EXPECTED_PATTERNS[("DataArrivalFunction", "RetrainCheck")]["source"] == [events.NACELLE_SOURCE]


# ------------------------------------------------------------------ IoT: rules and the device policy


@pytest.mark.parametrize("rule", sorted(resources("AWS::IoT::TopicRule")))
def test_iot_rule_invokes_a_function_it_may_invoke_and_dead_letters(rule: str) -> None:
    payload = resources("AWS::IoT::TopicRule")[rule]["Properties"]["TopicRulePayload"]
    targets = {ref_target(a["Lambda"]["FunctionArn"]) for a in payload["Actions"] if "Lambda" in a}
    assert targets and targets <= set(functions()), f"{rule}: Lambda actions {targets}"
    permitted = {ref_target(p["Properties"]["FunctionName"]) for p in resources("AWS::Lambda::Permission").values()
                 if p["Properties"]["Principal"] == "iot.amazonaws.com"
                 and ref_target(p["Properties"].get("SourceArn")) == rule}
    assert targets <= permitted, f"{rule}: no lambda:InvokeFunction permission scoped to the rule for {targets}"
    assert ref_target(payload["ErrorAction"]["Sqs"]["QueueUrl"]) in resources("AWS::SQS::Queue")


def test_health_rule_selects_what_deployment_status_parses() -> None:
    from dataclasses import fields

    from shared.messages import HealthRow

    sql = resources("AWS::IoT::TopicRule")["HealthRule"]["Properties"]["TopicRulePayload"]["Sql"]
    assert sql == ("SELECT *, topic(2) AS thing_name, timestamp() AS received_at, clientid() AS client_id "
                   "FROM 'turbines/+/health'")
    assert {"thing_name", "received_at", "client_id"} <= {f.name for f in fields(HealthRow)}


def test_device_policy_reaches_only_the_devices_own_topics() -> None:
    policy = resources("AWS::IoT::Policy")["CoreDevicePolicy"]  # ClaimCertificatePolicy: tests/unit/test_iot_policy.py
    own = "/${!iot:Connection.Thing.ThingName}"  # ${! ...} keeps the IoT policy variable through Fn::Sub
    for statement in as_list(policy["Properties"]["PolicyDocument"]["Statement"]):
        actions = set(as_list(statement["Action"]))
        if actions & {"iot:Connect", "iot:Publish", "iot:Receive", "iot:Subscribe"}:
            for resource in as_list(statement["Resource"]):
                assert own in str(resource.get("Fn::Sub")), f"{actions} on {resource}"
    role = resources("AWS::IAM::Role")["GreengrassTokenExchangeRole"]["Properties"]
    objects = [r for p in role["Policies"] for st in as_list(p["PolicyDocument"]["Statement"])
               if "s3:GetObject" in as_list(st["Action"]) for r in as_list(st["Resource"])]
    assert objects == [{"Fn::Sub": "${DataBucket.Arn}/components/*"}]


# ------------------------------------------------------------------ samconfig.toml


def test_samconfig_overrides_only_template_parameters() -> None:
    config = tomllib.loads(SAMCONFIG.read_text(encoding="utf-8"))
    deploy = config["default"]["deploy"]["parameters"]
    overrides = as_list(deploy["parameter_overrides"])
    names = {item.split("=", 1)[0] for entry in overrides for item in str(entry).split()}
    assert names <= set(load_template()["Parameters"]), names - set(load_template()["Parameters"])
    assert "CAPABILITY_IAM" in str(deploy["capabilities"])
    assert config["default"]["global"]["parameters"]["stack_name"] == "nacelle"


# ------------------------------------------------------------------ IoT rules, schedules, alerts


ANOMALY_RULE_SQL = ("SELECT *, topic(2) AS thing_name, timestamp() AS received_at, clientid() AS client_id "
                    "FROM 'turbines/+/anomalies'")


def test_anomaly_rule_invokes_the_alert_function_and_has_an_error_action() -> None:
    payload = resources("AWS::IoT::TopicRule")["AnomalyRule"]["Properties"]["TopicRulePayload"]
    assert payload["Sql"] == ANOMALY_RULE_SQL  # docs/fleet.md
    assert payload["AwsIotSqlVersion"] == "2016-03-23" and payload["RuleDisabled"] is False
    assert [ref_target(a["Lambda"]["FunctionArn"]) for a in payload["Actions"]] == ["AnomalyAlertFunction"]
    error = payload["ErrorAction"]["Sqs"]
    assert ref_target(error["QueueUrl"]) == "FailedEventsQueue"
    role = resources("AWS::IAM::Role")[ref_target(error["RoleArn"]) or ""]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "iot.amazonaws.com"}


def test_every_topic_rule_lambda_action_has_an_invoke_permission_for_that_rule() -> None:
    permissions = resources("AWS::Lambda::Permission").values()
    for name, rule in resources("AWS::IoT::TopicRule").items():
        assert rule["Properties"]["TopicRulePayload"].get("ErrorAction"), f"{name}: no ErrorAction"
        for action in rule["Properties"]["TopicRulePayload"]["Actions"]:
            function = ref_target(action["Lambda"]["FunctionArn"])
            assert any(ref_target(p["Properties"]["FunctionName"]) == function
                       and p["Properties"]["Principal"] == "iot.amazonaws.com"
                       and ref_target(p["Properties"].get("SourceArn")) == name for p in permissions), (
                f"{name}: no lambda:InvokeFunction permission for iot.amazonaws.com with SourceArn {name}")


@pytest.mark.parametrize("logical_id", sorted(functions()))
def test_schedule_events_are_retried_and_dead_lettered(logical_id: str) -> None:
    props = functions()[logical_id]["Properties"]
    schedules = {n: e["Properties"] for n, e in props.get("Events", {}).items() if e["Type"] == "Schedule"}
    admitted = {ref_target(arn)
                for qp in resources("AWS::SQS::QueuePolicy").values()
                for st in as_list(qp["Properties"]["PolicyDocument"]["Statement"]) if st.get("Effect") == "Allow"
                for arn in as_list(st.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn", []))}
    for event, schedule in schedules.items():
        assert schedule.get("RetryPolicy"), f"{event}: no RetryPolicy"
        assert ref_target(schedule.get("DeadLetterConfig", {}).get("Arn")) in resources("AWS::SQS::Queue")
        assert f"{logical_id}{event}" in admitted, f"{event}: the dead-letter queue's policy does not admit its rule"


def test_the_offline_check_runs_every_minute() -> None:
    events = functions()["AnomalyAlertFunction"]["Properties"]["Events"]
    assert events["OfflineCheck"]["Type"] == "Schedule"
    assert events["OfflineCheck"]["Properties"]["Schedule"] == "rate(1 minute)"


def test_alert_state_table_and_the_optional_email_subscription() -> None:
    table = resources("AWS::DynamoDB::Table")["AlertStateTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    [subscription] = [s for s in resources("AWS::SNS::Subscription").values()
                      if ref_target(s["Properties"]["TopicArn"]) == "AlertsTopic"]
    assert subscription["Condition"] == "HasAlertEmail"
    assert ref_target(subscription["Properties"]["TopicArn"]) == "AlertsTopic"
    assert subscription["Properties"]["Protocol"] == "email"
    assert load_template()["Parameters"]["AlertEmail"]["Default"] == ""


def test_the_console_api_needs_iam_and_routes_exactly_what_the_app_serves() -> None:
    from services.console.app import app

    api = resources("AWS::Serverless::Api")["ConsoleApi"]["Properties"]
    assert api["Auth"]["DefaultAuthorizer"] == "AWS_IAM", "the console must not be reachable anonymously"
    declared = set()
    for name, event in functions()["ConsoleFunction"]["Properties"]["Events"].items():
        assert event["Type"] == "Api", name
        props = event["Properties"]
        assert ref_target(props["RestApiId"]) == "ConsoleApi", name
        assert "Auth" not in props, f"{name}: no route may override the API's AWS_IAM authorisation"
        declared.add((props["Path"], props["Method"]))
    served = {(path, method) for path, methods in app.routes.items() for method in methods}
    assert declared == served, "template.yaml's console routes differ from the Chalice app's"
