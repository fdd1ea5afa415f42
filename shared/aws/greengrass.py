"""Greengrass port on greengrassv2 (components, deployments) and IoT (thing groups).

The request rules both adapters enforce (recipe identity, client token shape) live here; the local stand-in
(nacelle/local/adapters/greengrass.py) imports them so both refuse the same input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import boto3
from botocore.exceptions import ClientError

from shared.errors import AdapterError, ConfigurationError, Conflict, NotFound
from shared.events import DEPLOYMENT_STATUS_CHANGE
from shared.ports import ComponentVersion, Deployment, DeploymentStatus, EffectiveDeployment, ExecutionStatus

STATUS_CHANGE = DEPLOYMENT_STATUS_CHANGE  # EventBridge detail-type
STATUS_SOURCE = "aws.greengrass"
_CLIENT_TOKEN = re.compile(r"[a-zA-Z0-9-]{1,64}")  # CreateDeployment clientToken (ClientTokenString)
_DEPLOYMENT_NAME_MAX = 256
_FAILURE_TYPES = frozenset({"FAILED", "REJECTED", "TIMED_OUT", "ALL"})


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def recipe_identity(recipe: Mapping[str, Any]) -> tuple[str, str]:
    """(ComponentName, ComponentVersion) of a recipe; ConfigurationError names the missing field."""
    for field in ("ComponentName", "ComponentVersion"):
        if not isinstance(recipe.get(field), str) or not recipe[field]:
            raise ConfigurationError(f"component recipe: field {field} must be a non-empty string")
    return str(recipe["ComponentName"]), str(recipe["ComponentVersion"])


def check_deployment_request(name: str, client_token: str) -> None:
    if not 1 <= len(name) <= _DEPLOYMENT_NAME_MAX:
        raise ConfigurationError(f"deployment name must have 1-{_DEPLOYMENT_NAME_MAX} characters, got {len(name)}")
    if not _CLIENT_TOKEN.fullmatch(client_token):
        raise ConfigurationError(f"deployment clientToken {client_token[:70]!r} must match [a-zA-Z0-9-]{{1,64}}")


@dataclass(frozen=True)
class AbortCriterion:
    failure_type: str  # FAILED | REJECTED | TIMED_OUT | ALL
    threshold_percentage: float
    min_executed_things: int


@dataclass(frozen=True)
class JobConfig:
    """The parts of CreateDeployment's iotJobConfiguration the local stand-in acts on."""

    maximum_per_minute: int | None = None
    abort: tuple[AbortCriterion, ...] = ()
    in_progress_timeout_minutes: int | None = None


def _int(value: Any, where: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise ConfigurationError(f"iotJobConfiguration.{where} must be an integer in [{low}, {high or 'inf'}], "
                                 f"got {value!r}")
    return value


def job_config(config: Mapping[str, Any]) -> JobConfig:
    """Parse and check iotJobConfiguration against the service model's limits (ConfigurationError names the field)."""
    rollout = config.get("jobExecutionsRolloutConfig") or {}
    per_minute = rollout.get("maximumPerMinute")
    criteria = []
    for i, c in enumerate((config.get("abortConfig") or {}).get("criteriaList", [])):
        where = f"abortConfig.criteriaList[{i}]"
        if c.get("failureType") not in _FAILURE_TYPES or c.get("action") != "CANCEL":
            raise ConfigurationError(f"iotJobConfiguration.{where}: failureType must be one of "
                                     f"{sorted(_FAILURE_TYPES)} and action CANCEL")
        pct = c.get("thresholdPercentage")
        if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 <= pct <= 100:
            raise ConfigurationError(f"iotJobConfiguration.{where}.thresholdPercentage must be in [0, 100]")
        least = _int(c.get("minNumberOfExecutedThings"), f"{where}.minNumberOfExecutedThings", 1)
        criteria.append(AbortCriterion(c["failureType"], float(pct), least))
    if "abortConfig" in config and not criteria:
        raise ConfigurationError("iotJobConfiguration.abortConfig.criteriaList needs at least one criterion")
    timeout = (config.get("timeoutConfig") or {}).get("inProgressTimeoutInMinutes")
    return JobConfig(
        None if per_minute is None else _int(per_minute, "jobExecutionsRolloutConfig.maximumPerMinute", 1, 1000),
        tuple(criteria),
        None if timeout is None else _int(timeout, "timeoutConfig.inProgressTimeoutInMinutes", 1))


def component_arn(region: str, account: str, name: str, version: str, partition: str = "aws") -> str:
    return f"arn:{partition}:greengrass:{region}:{account}:components:{name}:versions:{version}"


def thing_group_arn(region: str, account: str, group: str) -> str:
    return f"arn:aws:iot:{region}:{account}:thinggroup/{group}"


def thing_arn(region: str, account: str, thing: str) -> str:
    """A thing as a deployment target (a deployment to the core device itself)."""
    return f"arn:aws:iot:{region}:{account}:thing/{thing}"


def core_device_arn(region: str, account: str, thing: str) -> str:
    return f"arn:aws:greengrass:{region}:{account}:coreDevices:{thing}"


class AwsGreengrass:
    """`account` is needed for component ARNs (GetComponent takes an ARN); read from STS when not given."""

    def __init__(self, client: Any = None, iot_client: Any = None, account: str | None = None,
                 sts_client: Any = None) -> None:
        self._client = client
        self._iot = iot_client
        self._sts = sts_client
        self._account = account

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("greengrassv2")
        return self._client

    @property
    def iot(self) -> Any:
        if self._iot is None:
            self._iot = boto3.client("iot")
        return self._iot

    @property
    def account(self) -> str:
        if self._account is None:
            sts = self._sts or boto3.client("sts")
            try:
                self._account = str(sts.get_caller_identity()["Account"])
            except ClientError as e:
                raise AdapterError(f"STS GetCallerIdentity failed: {_code(e)}") from e
        return self._account

    # -- components ---------------------------------------------------------------------------------------------

    def get_component(self, name: str, version: str) -> ComponentVersion | None:
        arn = component_arn(self.client.meta.region_name, self.account, name, version, self.client.meta.partition)
        try:
            out = self.client.get_component(arn=arn, recipeOutputFormat="JSON")
        except ClientError as e:
            if _code(e) == "ResourceNotFoundException":
                return None
            raise AdapterError(f"Greengrass GetComponent {name}@{version} failed: {_code(e)}") from e
        try:
            recipe = json.loads(out["recipe"])
        except ValueError as e:
            raise AdapterError(f"Greengrass GetComponent {name}@{version}: recipe is not JSON") from e
        return ComponentVersion(name, version, arn, recipe)

    def create_component_version(self, recipe: Mapping[str, Any]) -> ComponentVersion:
        name, version = recipe_identity(recipe)
        blob = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
        try:
            out = self.client.create_component_version(inlineRecipe=blob)
        except ClientError as e:
            if _code(e) == "ConflictException":
                raise Conflict(f"component {name}@{version} already exists (versions are immutable)") from e
            raise AdapterError(f"Greengrass CreateComponentVersion {name}@{version} failed: {_code(e)}") from e
        status = out.get("status", {})
        if status.get("componentState") == "FAILED":
            raise AdapterError(f"component {name}@{version} failed: {status.get('message', '')} "
                               f"{status.get('errors', {})}")
        arn = out.get("arn") or component_arn(self.client.meta.region_name, self.account, name, version,
                                              self.client.meta.partition)
        return ComponentVersion(name, version, arn, json.loads(blob))

    # -- deployments --------------------------------------------------------------------------------------------

    def create_deployment(self, target_arn: str, name: str, components: Mapping[str, Mapping[str, Any]],
                          deployment_policies: Mapping[str, Any], iot_job_configuration: Mapping[str, Any],
                          client_token: str) -> str:
        check_deployment_request(name, client_token)
        job_config(iot_job_configuration)
        try:
            out = self.client.create_deployment(
                targetArn=target_arn, deploymentName=name, components=plain(components),
                deploymentPolicies=plain(deployment_policies), iotJobConfiguration=plain(iot_job_configuration),
                clientToken=client_token)
        except ClientError as e:
            if _code(e) == "ConflictException":
                raise Conflict(f"deployment {name} to {target_arn} conflicts: {_code(e)}") from e
            if _code(e) == "ResourceNotFoundException":
                raise NotFound(f"deployment target {target_arn} (or a component) does not exist") from e
            raise AdapterError(f"Greengrass CreateDeployment {name} failed: {_code(e)}") from e
        return str(out["deploymentId"])

    def get_deployment(self, deployment_id: str) -> Deployment:
        try:
            out = self.client.get_deployment(deploymentId=deployment_id)
        except ClientError as e:
            if _code(e) == "ResourceNotFoundException":
                raise NotFound(f"no Greengrass deployment {deployment_id}") from e
            raise AdapterError(f"Greengrass GetDeployment {deployment_id} failed: {_code(e)}") from e
        return Deployment(
            deployment_id=str(out.get("deploymentId", deployment_id)), name=str(out.get("deploymentName") or ""),
            target_arn=str(out.get("targetArn", "")), status=cast(DeploymentStatus, out.get("deploymentStatus")),
            components=dict(out.get("components") or {}), created_at=out.get("creationTimestamp"),
            revision=str(out.get("revisionId", "")))

    def cancel_deployment(self, deployment_id: str) -> None:
        try:
            self.client.cancel_deployment(deploymentId=deployment_id)
        except ClientError as e:
            if _code(e) == "ResourceNotFoundException":
                raise NotFound(f"no Greengrass deployment {deployment_id}") from e
            if _code(e) == "ConflictException":
                raise Conflict(f"deployment {deployment_id} cannot be canceled in its current state") from e
            raise AdapterError(f"Greengrass CancelDeployment {deployment_id} failed: {_code(e)}") from e

    def list_effective_deployments(self, thing_name: str) -> list[EffectiveDeployment]:
        found: list[dict[str, Any]] = []
        try:
            for page in self.client.get_paginator("list_effective_deployments").paginate(
                    coreDeviceThingName=thing_name):
                found.extend(page.get("effectiveDeployments", []))
        except ClientError as e:
            if _code(e) == "ResourceNotFoundException":
                raise NotFound(f"no Greengrass core device {thing_name}") from e
            raise AdapterError(f"Greengrass ListEffectiveDeployments {thing_name} failed: {_code(e)}") from e
        found.sort(key=lambda d: d["creationTimestamp"], reverse=True)
        return [EffectiveDeployment(
            deployment_id=str(d["deploymentId"]), name=str(d.get("deploymentName", "")),
            target_arn=str(d.get("targetArn", "")),
            execution_status=cast(ExecutionStatus, d["coreDeviceExecutionStatus"]),
            reason=str(d.get("reason", "")), modified_at=d.get("modifiedTimestamp")) for d in found]

    # -- thing groups (IoT) -------------------------------------------------------------------------------------

    def thing_group_arn(self, group_name: str) -> str:
        try:
            return str(self.iot.describe_thing_group(thingGroupName=group_name)["thingGroupArn"])
        except ClientError as e:
            if _code(e) == "ResourceNotFoundException":
                raise NotFound(f"no IoT thing group {group_name}") from e
            raise AdapterError(f"IoT DescribeThingGroup {group_name} failed: {_code(e)}") from e

    def things_in_group(self, group_name: str) -> list[str]:
        things: list[str] = []
        try:
            for page in self.iot.get_paginator("list_things_in_thing_group").paginate(thingGroupName=group_name):
                things.extend(page.get("things", []))
        except ClientError as e:
            if _code(e) == "ResourceNotFoundException":
                raise NotFound(f"no IoT thing group {group_name}") from e
            raise AdapterError(f"IoT ListThingsInThingGroup {group_name} failed: {_code(e)}") from e
        return sorted(things)


def plain(value: Any) -> Any:
    """Plain dicts and lists (botocore's validator and json refuse other mappings and tuples)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
