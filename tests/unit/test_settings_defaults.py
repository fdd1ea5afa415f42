"""Every tunable's default is written once, in shared/settings.py: template.yaml's Parameters and the function
environment they set, samconfig.toml's overrides, the Lambda settings, the policies and the local stack's
LocalSettings agree with it."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.runtime.stack import LocalSettings
from shared import settings as defaults
from shared.gate import GatePolicy
from shared.rollout_wiring import RolloutSettings
from shared.settings import Settings
from shared.usecases.alerts import AlertPolicy
from shared.usecases.drift import DriftPolicy
from shared.usecases.retraining import RetrainPolicy
from tests.unit.test_template import SAMCONFIG, function_env, function_setting, functions, load_template

# template parameter -> the default it must have
PARAMETER_DEFAULTS: dict[str, Any] = {
    "ModelPackageGroupName": defaults.MODEL_PACKAGE_GROUP,
    "TrainingInstanceType": defaults.TRAINING_INSTANCE_TYPE,
    "QuietPeriodSeconds": defaults.QUIET_PERIOD_S,
    "MinNewTurbineHours": defaults.MIN_NEW_TURBINE_HOURS,
    "GateMinEventF1": defaults.GATE_MIN_EVENT_F1,
    "GateMinRecallMediumHigh": defaults.GATE_MIN_RECALL_MEDIUM_HIGH,
    "GateMaxFalseAlarmsPerDay": defaults.GATE_MAX_FALSE_ALARMS_PER_DAY,
    "GateRegressionTolerance": defaults.GATE_REGRESSION_TOLERANCE,
    "GateMinFaults": defaults.GATE_MIN_FAULTS,
    "CompileInstanceType": defaults.COMPILE_INSTANCE_TYPE,
    "AlertEscalateAfterSeconds": defaults.ALERT_ESCALATE_AFTER_S,
    "AlertRateLimit": defaults.ALERT_RATE_LIMIT,
    "OfflineAfterSeconds": defaults.OFFLINE_AFTER_S,
    "CanaryThingGroupName": defaults.CANARY_GROUP,
    "FleetThingGroupName": defaults.FLEET_GROUP,
    "CanarySoakSeconds": defaults.CANARY_SOAK_S,
    "CanaryTimeoutSeconds": defaults.CANARY_TIMEOUT_S,
    "DeploymentStuckSeconds": defaults.STUCK_TIMEOUT_S,
    "RolloutPollSeconds": defaults.ROLLOUT_POLL_S,
    "DeviceNamePattern": defaults.DEVICE_NAME_PATTERN,
    "DeviceSerialPattern": defaults.DEVICE_SERIAL_PATTERN,
    "DriftRetrainTurbines": defaults.DRIFT_RETRAIN_TURBINES,
    "DriftRetrainAfterSeconds": defaults.DRIFT_RETRAIN_AFTER_S,
    "DriftRetrainMinCapturedHours": defaults.DRIFT_RETRAIN_MIN_CAPTURED_HOURS,
    "DriftAutoApproveCanary": defaults.DRIFT_AUTO_APPROVE_CANARY,
}
# parameters with a default that set no tunable of ours
NOT_TUNABLES = {"LogLevel", "AlertEmail", "NeoTarget"}


def same(value: Any, default: Any) -> bool:
    """A template value (a string or a YAML number) against a default, as the settings would parse it."""
    if isinstance(default, bool):  # a template's "false"/"true", as pydantic reads it
        return str(value).lower() == str(default).lower()
    if not isinstance(default, int | float):
        return str(value) == str(default)
    try:
        return float(value) == float(default)
    except (TypeError, ValueError):
        return False


def parameter_behind(value: Any) -> str | None:
    """The template parameter a function environment value comes from: `!Ref Param`, or the name property of a
    resource named by a parameter (`!Ref CanaryThingGroup`, also inside `!Select [1, !Split ["/", ...]]`)."""
    template = load_template()
    if isinstance(value, dict) and "Fn::Select" in value:
        _, inner = value["Fn::Select"]
        return parameter_behind(inner["Fn::Split"][1]) if isinstance(inner, dict) and "Fn::Split" in inner else None
    if not (isinstance(value, dict) and set(value) == {"Ref"}):
        return None
    target = str(value["Ref"])
    if target in template["Parameters"]:
        return target
    properties = template["Resources"].get(target, {}).get("Properties", {})
    names = [v["Ref"] for k, v in properties.items() if k.endswith("Name") and isinstance(v, dict) and "Ref" in v
             and v["Ref"] in template["Parameters"]]
    return names[0] if len(names) == 1 else None


def settings_of(props: dict[str, Any]) -> type[Settings]:
    name = re.fullmatch(r"services/([a-z_][a-z0-9_]*)/?", str(props["CodeUri"]))
    assert name is not None
    settings = importlib.import_module(f"services.{name.group(1)}.app").SETTINGS
    assert issubclass(settings, Settings)
    return settings


def test_template_parameters_default_to_the_shared_defaults() -> None:
    parameters = load_template()["Parameters"]
    for name, default in PARAMETER_DEFAULTS.items():
        assert same(parameters[name]["Default"], default), (
            f"template.yaml {name} defaults to {parameters[name]['Default']!r}, shared/settings.py to {default!r}")
    behind = {p for props in (f["Properties"] for f in functions().values())
              for p in map(parameter_behind, function_env(props).values()) if p is not None}
    known = PARAMETER_DEFAULTS.keys() | NOT_TUNABLES
    unlisted = sorted(p for p in behind if "Default" in parameters[p] and p not in known)
    assert not unlisted, f"parameters {unlisted} set a function's environment: give their default a shared constant"


@pytest.mark.parametrize("logical_id", sorted(functions()))
def test_the_function_environment_agrees_with_its_settings_defaults(logical_id: str) -> None:
    props = functions()[logical_id]["Properties"]
    env, parameters = function_env(props), load_template()["Parameters"]
    settings = settings_of(props)
    for name, field in settings.model_fields.items():
        variable = field.alias or name
        if field.is_required() or variable not in env:
            continue
        value = env[variable]
        parameter = parameter_behind(value)
        if parameter is not None:
            value = parameters[parameter].get("Default")
            assert value is not None, f"{logical_id}: {variable} comes from {parameter}, which has no default"
        elif isinstance(value, dict):  # an ARN or a name the stack makes: nothing to compare
            continue
        assert same(value, field.default), (
            f"{logical_id}: {variable} is {value!r} in template.yaml, {settings.__name__}.{name} defaults to "
            f"{field.default!r}")


def test_samconfig_overrides_keep_the_defaults() -> None:
    overrides = tomllib.loads(SAMCONFIG.read_text())["default"]["deploy"]["parameters"]["parameter_overrides"]
    for override in overrides:
        name, _, value = override.partition("=")
        if name in PARAMETER_DEFAULTS:
            assert same(value, PARAMETER_DEFAULTS[name]), f"samconfig.toml sets {override}: not the shared default"


def lambda_settings(settings: type[Settings]) -> Any:
    """The settings with only their required variables set."""
    return settings.from_env({variable: "x" for variable, required in settings.env_vars().items() if required})


def test_the_lambda_settings_and_the_policies_take_the_shared_defaults() -> None:
    from services.anomaly_alert.app import AnomalyAlertSettings
    from services.data_arrival.app import DataArrivalSettings
    from services.drift_monitor.app import DriftMonitorSettings
    from services.training_completed.app import TrainingCompletedSettings

    assert lambda_settings(TrainingCompletedSettings).gate() == GatePolicy()
    assert lambda_settings(AnomalyAlertSettings).policy() == AlertPolicy()
    assert lambda_settings(DataArrivalSettings).policy() == RetrainPolicy(defaults.MODEL_PACKAGE_GROUP)
    assert lambda_settings(DriftMonitorSettings).policy() == DriftPolicy()
    assert lambda_settings(TrainingCompletedSettings).drift_auto_approve_canary is False
    assert TrainingCompletedSettings.from_env({**{v: "x" for v, r in TrainingCompletedSettings.env_vars().items() if r},
                                              "NACELLE_DRIFT_AUTO_APPROVE_CANARY": "true"}).drift_auto_approve_canary
    assert (DriftPolicy().retrain_turbines, DriftPolicy().change_threshold) == (defaults.DRIFT_RETRAIN_TURBINES,
                                                                                defaults.DRIFT_CHANGE_THRESHOLD)
    assert GatePolicy().min_faults == defaults.GATE_MIN_FAULTS
    assert (AlertPolicy().rate_limit, AlertPolicy().severity_durations_s) == (defaults.ALERT_RATE_LIMIT,
                                                                              defaults.SEVERITY_DURATIONS_S)
    assert RetrainPolicy("g").quiet_period_s == defaults.QUIET_PERIOD_S
    rollout = lambda_settings(RolloutSettings)
    assert (rollout.soak_s, rollout.canary_timeout_s, rollout.stuck_timeout_s, rollout.poll_s) == (
        defaults.CANARY_SOAK_S, defaults.CANARY_TIMEOUT_S, defaults.STUCK_TIMEOUT_S, defaults.ROLLOUT_POLL_S)


def test_the_local_stack_takes_the_shared_defaults_with_its_own_timescales() -> None:
    local = LocalSettings.model_validate({})
    assert local.gate() == GatePolicy()
    assert local.alert_policy() == AlertPolicy()
    assert local.drift_policy() == DriftPolicy()
    assert local.drift_auto_approve_canary is defaults.DRIFT_AUTO_APPROVE_CANARY is False
    assert local.retrain_policy() == RetrainPolicy(defaults.MODEL_PACKAGE_GROUP,
                                                   quiet_period_s=defaults.LOCAL_QUIET_PERIOD_S)
    assert (local.group, local.canary_group, local.fleet_group) == (
        defaults.MODEL_PACKAGE_GROUP, defaults.CANARY_GROUP, defaults.FLEET_GROUP)
    assert (local.canary_soak_s, local.canary_timeout_s, local.stuck_timeout_s, local.rollout_poll_s) == (
        defaults.LOCAL_CANARY_SOAK_S, defaults.LOCAL_CANARY_TIMEOUT_S, defaults.LOCAL_STUCK_TIMEOUT_S,
        defaults.LOCAL_ROLLOUT_POLL_S)
    schedule = functions()["AnomalyAlertFunction"]["Properties"]["Events"]["OfflineCheck"]["Properties"]["Schedule"]
    assert schedule == "rate(1 minute)" and local.offline_check_interval_s == defaults.OFFLINE_CHECK_INTERVAL_S == 60


def test_the_local_rollout_deploys_the_pinned_detector_version(tmp_path: Path) -> None:
    from nacelle.components import COMPONENT_DIR, read_version
    from nacelle.local.runtime.stack import Stack

    pinned = (COMPONENT_DIR / "VERSION").read_text().strip()
    assert read_version() == pinned and Stack(tmp_path / "home").rollout_deps().detector_version == pinned


def test_data_arrival_takes_on_only_files_its_memory_can_validate() -> None:
    from services.data_arrival.app import DataArrivalSettings
    from shared.ml.validation import MAX_TEXT_BYTES
    from shared.usecases.retraining import VALIDATION_MEMORY_FACTOR

    memory_mb = int(function_setting(functions()["DataArrivalFunction"]["Properties"], "MemorySize"))
    required = {variable: "x" for variable, needed in DataArrivalSettings.env_vars().items() if needed}
    on_aws = DataArrivalSettings.from_env({**required, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb)})
    limit = on_aws.policy().max_file_bytes
    assert limit == memory_mb * 2**20 // VALIDATION_MEMORY_FACTOR < MAX_TEXT_BYTES  # 1 GB: about 85 MiB
    assert limit * 8 < memory_mb * 2**20 * 0.7  # validation's measured peak (8 x the text) leaves room for the rest
    assert lambda_settings(DataArrivalSettings).policy().max_file_bytes == MAX_TEXT_BYTES  # off Lambda
