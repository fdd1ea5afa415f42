"""console: the operator console, one Chalice app (JSON API under /api, the pages around it) over the operator use
cases (shared.usecases.operator_*). On AWS it runs behind API Gateway with AWS_IAM authorisation; locally
`nacelle up` serves this same app object (nacelle/local/runtime/console_server.py) behind a token."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import unquote

from chalice import Chalice, Response
from pydantic import Field

from shared import settings as defaults
from shared.errors import ConfigurationError
from shared.observability import logger
from shared.ports import TrainingJob, TrainingRequest
from shared.rollout_wiring import RolloutSettings, rollout_deps
from shared.usecases import (
    operator_alerts,
    operator_data,
    operator_fleet,
    operator_models,
    operator_signals,
    operator_timeline,
)
from shared.usecases.alerts import AlertDeps, AlertPolicy
from shared.usecases.operator import (
    InvalidRequest,
    OperatorDeps,
    choice,
    flag,
    integer,
    page,
    paging,
    text,
    version_number,
)
from shared.usecases.retraining import ArrivalDeps, RetrainPolicy

if __package__:  # services.console.app: the repository, the local stack, the tests
    from services.console import web
else:  # the Lambda package, whose root is this folder (CodeUri services/console/)
    import web  # type: ignore[no-redef]

app = Chalice(app_name="nacelle-console")
MODEL_STATUSES = ("PendingManualApproval", "Approved", "Rejected")
# every body type a browser form can send is let through to the cross-site check, which answers 403
ANY_BODY = ["application/json", "application/x-www-form-urlencoded", "multipart/form-data", "text/plain"]
_bound: list[OperatorDeps] = []


class ConsoleSettings(RolloutSettings):
    alert_table: str = Field(alias="NACELLE_ALERT_TABLE")
    offline_after_s: float = Field(defaults.OFFLINE_AFTER_S, alias="NACELLE_OFFLINE_AFTER_S")
    quiet_period_s: float = Field(defaults.QUIET_PERIOD_S, alias="NACELLE_QUIET_PERIOD_S")
    min_new_turbine_hours: float = Field(defaults.MIN_NEW_TURBINE_HOURS, alias="NACELLE_MIN_NEW_TURBINE_HOURS")


SETTINGS = ConsoleSettings


def bind(deps: OperatorDeps) -> None:
    """Serve with these dependencies (the local stack, tests) instead of the AWS ones."""
    _bound[:] = [deps]


def deps() -> OperatorDeps:
    return _bound[0] if _bound else aws_deps()


# -- models ------------------------------------------------------------------------------------------------------------
@app.route("/api/models")
@web.api
def models() -> Any:
    q = web.query(app)
    return page(operator_models.list_models(deps(), choice(q, "status", MODEL_STATUSES)), *paging(q))


@app.route("/api/models/{version}")
@web.api
def model(version: str) -> Any:
    return operator_models.show_model(deps(), version_number(version))


@app.route("/api/models/{version}/compare/{other}")
@web.api
def compare(version: str, other: str) -> Any:
    return operator_models.compare(deps(), version_number(version), version_number(other, "other"))


def _decide(version: str, decision: operator_models.Decision) -> Any:
    web.check_same_origin(app)
    b = web.body(app)
    return operator_models.decide(deps(), version_number(version), decision, web.actor(app), text(b, "reason"),
                                  override_gate=flag(b, "override_gate"))


@app.route("/api/models/{version}/approve", methods=["POST"], content_types=ANY_BODY)
@web.api
def approve(version: str) -> Any:
    return _decide(version, "approve")


@app.route("/api/models/{version}/reject", methods=["POST"], content_types=ANY_BODY)
@web.api
def reject(version: str) -> Any:
    return _decide(version, "reject")


# -- jobs and data -----------------------------------------------------------------------------------------------------
@app.route("/api/jobs")
@web.api
def jobs() -> Any:
    return page(operator_data.jobs(deps()), *paging(web.query(app)))


@app.route("/api/jobs/{name}")
@web.api
def job(name: str) -> Any:
    return operator_data.job(deps(), name, integer(web.query(app), "lines", 40, 0, 1000))


@app.route("/api/jobs/{name}/retry", methods=["POST"], content_types=ANY_BODY)
@web.api
def retry(name: str) -> Any:
    web.check_same_origin(app)
    logger.info("job retry requested in the console", actor=web.actor(app), job_name=name)
    outcome = operator_data.retry(deps(), name)
    return {"action": outcome.action, "detail": outcome.detail, **outcome.data}


@app.route("/api/data")
@web.api
def data() -> Any:
    return operator_data.data_view(deps(), integer(web.query(app), "recent", 20, 1, 500))


# -- fleet -------------------------------------------------------------------------------------------------------------
@app.route("/api/fleet")
@web.api
def fleet() -> Any:
    d = deps()
    rows = operator_fleet.devices(d)
    q = web.query(app)
    state = choice(q, "state", (operator_fleet.ONLINE, operator_fleet.STOPPED, operator_fleet.OFFLINE))
    return {**page([r for r in rows if state is None or r["state"] == state], *paging(q, 100)),
            "offline_after_s": d.offline_after_s,
            "counts": {s: sum(r["state"] == s for r in rows) for s in (operator_fleet.ONLINE, operator_fleet.OFFLINE)}}


@app.route("/api/fleet/deployments")
@web.api
def deployments() -> Any:
    return operator_fleet.deployments_view(deps())


@app.route("/api/fleet/rollback", methods=["POST"], content_types=ANY_BODY)
@web.api
def rollback() -> Any:
    web.check_same_origin(app)
    b = web.body(app)
    if "version" not in b:
        raise InvalidRequest("version", "is required")
    version = version_number(b["version"])
    logger.info("rollback requested in the console", actor=web.actor(app), model_version=version)
    return operator_fleet.rollback(deps(), version)


@app.route("/api/fleet/cancel", methods=["POST"], content_types=ANY_BODY)
@web.api
def cancel_deployment() -> Any:
    web.check_same_origin(app)
    b = web.body(app)
    deployment_id = b.get("deployment_id")
    if not isinstance(deployment_id, str) or not deployment_id.strip():
        raise InvalidRequest("deployment_id", "is required (the deployment to cancel)")
    logger.info("deployment cancel requested in the console", actor=web.actor(app), deployment_id=deployment_id)
    return operator_fleet.cancel_deployment(deps(), deployment_id.strip())


# -- alerts and turbines -----------------------------------------------------------------------------------------------
@app.route("/api/alerts")
@web.api
def alerts() -> Any:
    q = web.query(app)
    return operator_alerts.list_view(deps(), q.get("turbine") or None, q.get("severity") or None,
                                     q.get("state") or None, *paging(q))


@app.route("/api/alerts/{alert_id}")
@web.api
def alert(alert_id: str) -> Any:
    return operator_alerts.detail(deps(), _unquote(alert_id))


@app.route("/api/alerts/{alert_id}/ack", methods=["POST"], content_types=ANY_BODY)
@web.api
def ack(alert_id: str) -> Any:
    web.check_same_origin(app)
    b = web.body(app)
    verdict = operator_alerts.verdict_of(b.get("verdict"))
    return operator_alerts.ack(deps(), _unquote(alert_id), web.actor(app), verdict, text(b, "note"))


@app.route("/api/turbines/{turbine}/timeline")
@web.api
def turbine_timeline(turbine: str) -> Any:
    return operator_timeline.timeline(deps(), _unquote(turbine))


@app.route("/api/turbines/{turbine}/signals")
@web.api
def turbine_signals(turbine: str) -> Any:
    d, name = deps(), _unquote(turbine)
    start, end = operator_signals.time_range(web.query(app))
    if not operator_timeline.known(d, name):
        raise operator_timeline.unknown(name)
    return operator_signals.signals(d, name, start, end)


def _unquote(value: str) -> str:
    return unquote(value)


# -- pages -------------------------------------------------------------------------------------------------------------
@app.route("/")
def index() -> Response:
    return web.page(app)


for _path in ("/models", "/fleet", "/alerts", "/data", "/turbines/{turbine}"):
    app.route(_path, name=f"page_{_path.strip('/').split('/')[0]}")(lambda **_: web.page(app))


@app.route("/favicon.ico")
def favicon() -> Response:
    return Response(body="", status_code=204, headers=web.SECURITY_HEADERS)


@app.route("/static/{name}")
def static(name: str) -> Response:
    return web.static_file(name)


# -- composition -------------------------------------------------------------------------------------------------------
class NoTraining:
    """The console on AWS starts no training job (its role may not; OperatorDeps.training_retry is False)."""

    def start(self, request: TrainingRequest) -> None:
        raise ConfigurationError("the console on AWS does not start training jobs")

    def describe(self, job_name: str) -> TrainingJob:
        raise ConfigurationError("the console on AWS does not read training jobs")


@cache
def aws_deps() -> OperatorDeps:
    from shared.aws.dynamodb import DynamoStateStore

    s = SETTINGS.from_env()
    rollout = rollout_deps(s)
    alerts = AlertDeps(DynamoStateStore(s.alert_table), rollout.state, rollout.registry, rollout.notifier,
                       lambda: datetime.now(UTC), s.model_package_group, AlertPolicy(offline_after_s=s.offline_after_s),
                       store=rollout.store)
    arrival = ArrivalDeps(rollout.store, rollout.state, rollout.notifier, rollout.events, NoTraining(),
                          rollout.registry, RetrainPolicy(s.model_package_group, s.min_new_turbine_hours,
                                                          s.quiet_period_s), lambda: datetime.now(UTC))
    return OperatorDeps(alerts=alerts, rollout=rollout, arrival=arrival, offline_after_s=s.offline_after_s,
                        training_retry=False)


def handle(event: dict[str, Any], deps: OperatorDeps) -> dict[str, Any]:
    """An API Gateway proxy event answered with these dependencies (the local server and tests)."""
    bind(deps)
    result: dict[str, Any] = app(event, None)
    return result


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    result: dict[str, Any] = app(event, context)
    return result
