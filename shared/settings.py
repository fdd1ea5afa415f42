"""One validated settings object per function, read once from the environment at the boundary, and the one
place for the defaults of every tunable.

Each field's alias is the environment variable that sets it; `env_vars()` lists them so a test can
check that template.yaml sets every variable the code reads.

The defaults below are the only place a tunable's default is written: the policies (shared.gate.GatePolicy,
shared.usecases.alerts.AlertPolicy, shared.usecases.retraining.RetrainPolicy), the Lambda settings (services/*/app.py,
shared/rollout_wiring.py), the local stack's LocalSettings (nacelle/local/runtime/stack.py) and template.yaml's
Parameters (tests/unit/test_settings_defaults.py checks the template, samconfig.toml and the settings against them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import ConfigurationError

S = TypeVar("S", bound="Settings")

# -- defaults ----------------------------------------------------------------------------------------------------------
MODEL_PACKAGE_GROUP = "nacelle-turbine"

# retraining (RetrainPolicy, data_arrival)
MIN_NEW_TURBINE_HOURS = 1.0  # new valid turbine data before a retrain starts
QUIET_PERIOD_S = 300.0  # the debounce: the retrain check runs this long after the last accepted upload of a burst
TRAINING_INSTANCE_TYPE = "ml.m5.xlarge"
COMPILE_INSTANCE_TYPE = "ml.m5.large"

# the quality gate (GatePolicy, training_completed)
GATE_MIN_EVENT_F1 = 0.75
GATE_MIN_RECALL_MEDIUM_HIGH = 0.75
GATE_MAX_FALSE_ALARMS_PER_DAY = 2.0
GATE_REGRESSION_TOLERANCE = 0.02  # the candidate's F1 may trail the champion's by at most this
GATE_MIN_FAULTS = 5  # fewer scored faults cannot judge F1 and recall: reported, not enforced

# anomaly alerts (AlertPolicy, anomaly_alert)
ALERT_ESCALATE_AFTER_S = 1800.0  # an episode open and unacknowledged this long escalates (once)
ALERT_REPEAT_EPISODES = 3  # the n-th episode of a turbine within the repeat window escalates
ALERT_REPEAT_WINDOW_S = 86400.0
ALERT_RATE_LIMIT = 5  # episode alerts per turbine per rate window; later ones fold into one summary
ALERT_RATE_WINDOW_S = 3600.0
OFFLINE_AFTER_S = 300.0  # a device whose last health is older than this is offline
OFFLINE_CHECK_INTERVAL_S = 60.0  # the offline check's period (template.yaml: rate(1 minute))
ALERT_RETENTION_S = 90 * 86400.0  # expires_at (DynamoDB TTL) of alert items
# severity (docs/fleet.md "Device records and alerts"): medium, high, critical need the peak score / threshold
# at least SEVERITY_RATIOS[i] AND the episode over its threshold for at least SEVERITY_DURATIONS_S[i]
SEVERITY_RATIOS = (1.5, 3.0, 6.0)
SEVERITY_DURATIONS_S = (0.0, 5.0, 60.0)

# drift monitoring (DriftPolicy, drift_monitor; docs/fleet.md "Drift monitoring"): distances in training standard
# deviations (shared/ml/drift.py)
DRIFT_MIN_WINDOWS = 600  # windows in the operating regime a period needs to be judged (5 min at the default stride)
DRIFT_FLEET_FACTOR = 5.0  # far from training: a distance of at least this times the baseline's tolerance...
DRIFT_MIN_DISTANCE = 0.3  # ...and at least this
# ...and for the anomaly score at least this: turbines differ in it by up to about 1 sd without any drift (a hub
# mounted a little askew), more than the few training turbines' tolerance shows
DRIFT_SCORE_MIN_DISTANCE = 1.5
DRIFT_CHANGE_THRESHOLD = 0.5  # changed: this far from the turbine's own first periods with the model version
DRIFT_REFERENCE_PERIODS = 3  # those first judged periods (their mean sketch is the turbine's reference)
DRIFT_ALERT_PERIODS = 2  # consecutive drifting periods raise a drift alert; as many calm ones resolve it
DRIFT_RETRAIN_TURBINES = 2  # retraining starts when at least this many turbines drift...
DRIFT_RETRAIN_AFTER_S = 7200.0  # ...each for at least this long (sample time)...
DRIFT_RETRAIN_MIN_CAPTURED_HOURS = 1.0  # ...with this much normal data captured on them since their drift began
# a version trained for a drift retraining request that passes the gate is approved for the canary group only, by
# training_completed (recorded as automatic); promotion to the fleet stays a person's approval. Off: a person approves.
DRIFT_AUTO_APPROVE_CANARY = False

# rollout (RolloutSettings, compilation_completed and deployment_status)
CANARY_GROUP = "nacelle-canary"
FLEET_GROUP = "nacelle-fleet"
CANARY_SOAK_S = 600.0  # every canary device serves the new model this long before the fleet gets it
CANARY_TIMEOUT_S = 3600.0
STUCK_TIMEOUT_S = 1800.0
ROLLOUT_POLL_S = 60.0  # the watchdog's period

# device provisioning (the pre-provisioning hook, `nacelle aws provision-device`; docs/devices.md): lower case only,
# so `WT-07` and `wt-07` can never be two turbines
DEVICE_NAME_PATTERN = "^[a-z0-9][a-z0-9-]{0,63}$"
DEVICE_SERIAL_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

# the local stack (LocalSettings): the same defaults, except these timescales suited to a laptop's demo
LOCAL_QUIET_PERIOD_S = 15.0
LOCAL_CANARY_SOAK_S = 10.0
LOCAL_CANARY_TIMEOUT_S = 300.0
LOCAL_STUCK_TIMEOUT_S = 180.0
LOCAL_ROLLOUT_POLL_S = 5.0


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    @classmethod
    def from_env(cls: type[S], env: Mapping[str, str] | None = None) -> S:
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if key in source:
                values[key] = source[key]
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigurationError(f"{cls.__name__}: invalid environment: {exc}") from exc

    @classmethod
    def env_vars(cls) -> dict[str, bool]:
        """Environment variable -> required (no default)."""
        return {(f.alias or name): f.is_required() for name, f in cls.model_fields.items()}


class CommonSettings(Settings):
    data_bucket: str = Field(alias="NACELLE_DATA_BUCKET")
    state_table: str = Field(alias="NACELLE_STATE_TABLE")
    model_package_group: str = Field(MODEL_PACKAGE_GROUP, alias="NACELLE_MODEL_PACKAGE_GROUP")
