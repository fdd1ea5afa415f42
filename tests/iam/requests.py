"""What the AWS adapters (shared/aws/) ask IAM for: each port call as the requests its boto3 calls need, and the
recording proxies that collect them while a handler runs on test doubles."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

from shared import ports
from shared.aws.compile import SageMakerCompile
from shared.aws.dynamodb import DynamoStateStore
from shared.aws.events import AwsEventPublisher, schedule_name
from shared.aws.greengrass import AwsGreengrass
from shared.aws.iot_registry import AwsThingRegistry
from shared.aws.neo import SageMakerNeo
from shared.aws.registry import SageMakerRegistry
from shared.aws.s3 import S3ObjectStore
from shared.aws.sns import SnsNotifier
from shared.aws.training import SageMakerTraining
from shared.ports import Envelope
from tests.iam.policy import PARTITION, REGION, UNWIRED, Request, arn, request, resolve
from tests.unit.test_template import function_env, functions

# ------------------------------------------------------------------ port calls -> IAM requests
# Each adapter method -> the requests its boto3 calls need (read from shared/aws/*.py). `a` holds the call's arguments
# by name, `out` its result or exception.


def table_arn(store: DynamoStateStore) -> str:
    return arn("dynamodb", f"table/{store.table}")


DYNAMO_ACTIONS = {"get": "GetItem", "put": "PutItem", "update_if": "UpdateItem", "query": "Query",
                  "delete": "DeleteItem"}


def dynamo(store: DynamoStateStore, method: str, a: Mapping[str, Any], out: Any, now: datetime) -> list[Request]:
    if method not in DYNAMO_ACTIONS:
        raise unmapped(store, method)
    # Every item operation and Query is authorised with the partition key as dynamodb:LeadingKeys.
    return [request(f"dynamodb:{DYNAMO_ACTIONS[method]}", table_arn(store), {"dynamodb:LeadingKeys": a["pk"]})]


def s3(store: S3ObjectStore, method: str, a: Mapping[str, Any], out: Any, now: datetime) -> list[Request]:
    bucket = f"arn:{PARTITION}:s3:::{store.bucket}"
    if method == "uri":
        return []
    if method == "list":
        return [request("s3:ListBucket", bucket, {"s3:prefix": a["prefix"]})]
    if method in ("put", "put_if_absent"):
        return [request("s3:PutObject", f"{bucket}/{a['key']}")]
    if method in ("get", "size", "exists"):
        # GetObject and HeadObject: a missing object reads as 404 only with s3:ListBucket, else S3 answers 403 and
        # the adapter raises AdapterError instead of ObjectNotFound (or False).
        return [request("s3:GetObject", f"{bucket}/{a['key']}"),
                request("s3:ListBucket", bucket, {"s3:prefix": a["key"]})]
    raise unmapped(store, method)


def sns(notifier: SnsNotifier, method: str, a: Mapping[str, Any], out: Any, now: datetime) -> list[Request]:
    topic = notifier.topic_arns.get(a["topic"])
    if not topic:
        return [Request(UNWIRED, f"SnsNotifier has no topic {a['topic']!r} in this function")]
    return [request("sns:Publish", topic)]


def events(publisher: AwsEventPublisher, method: str, a: Mapping[str, Any], out: Any,
           now: datetime) -> list[Request]:
    event: Envelope = a["event"]
    deliver_at = a.get("deliver_at")
    if deliver_at is None or deliver_at.astimezone(UTC) <= now.astimezone(UTC):
        return [request("events:PutEvents", arn("events", f"event-bus/{publisher.event_bus_name}"),
                        {"events:source": event.source, "events:detail-type": event.detail_type})]
    if not publisher.scheduler_role_arn or not publisher.event_bus_arn:
        return [Request(UNWIRED, "AwsEventPublisher without a scheduler role or bus ARN cannot schedule")]
    name = schedule_name(a.get("dedup_key"))
    return [request("scheduler:CreateSchedule", arn("scheduler", f"schedule/{publisher.schedule_group}/{name}")),
            request("iam:PassRole", publisher.scheduler_role_arn, {"iam:PassedToService": "scheduler.amazonaws.com"})]


def package(group: str, version: int | None = None) -> str:
    return arn("sagemaker", f"model-package/{group}" + ("" if version is None else f"/{version}"))


LIST_PACKAGES = request("sagemaker:ListModelPackages", arn("sagemaker", "model-package/*"))


def registry(reg: SageMakerRegistry, method: str, a: Mapping[str, Any], out: Any, now: datetime) -> list[Request]:
    group = a["group"]
    describe = lambda v: request("sagemaker:DescribeModelPackage", package(group, v))  # noqa: E731
    group_arn = arn("sagemaker", f"model-package-group/{group}")
    if method == "ensure_group":  # the stack creates the group: only the look-up runs
        return [request("sagemaker:DescribeModelPackageGroup", group_arn)]
    if method == "register":
        if not reg.image_uri:
            return [Request(UNWIRED, "SageMakerRegistry without an image URI cannot register")]
        made = [describe(out.version)] if isinstance(out, ports.ModelVersion) else []
        return [request("sagemaker:DescribeModelPackageGroup", group_arn), LIST_PACKAGES,
                request("sagemaker:CreateModelPackage", package(group)), *made]
    if method == "list":
        return [LIST_PACKAGES, *(describe(v.version) for v in out)] if isinstance(out, list) else [LIST_PACKAGES]
    reads = [LIST_PACKAGES, describe(a["version"])]  # the ARN's spelling from a listing, then the package
    if method == "get":
        return reads
    if method in ("set_status", "update_metadata"):
        return [*reads, request("sagemaker:UpdateModelPackage", package(group, a["version"]))]
    raise unmapped(reg, method)


def training(service: SageMakerTraining, method: str, a: Mapping[str, Any], out: Any, now: datetime) -> list[Request]:
    if method == "describe":
        return [request("sagemaker:DescribeTrainingJob", arn("sagemaker", f"training-job/{a['job_name']}"))]
    req: ports.TrainingRequest = a["request"]
    job = arn("sagemaker", f"training-job/{req.job_name}")
    needs = [request("sagemaker:CreateTrainingJob", job, {"sagemaker:InstanceTypes": service.instance_type}),
             request("iam:PassRole", service.role_arn, {"iam:PassedToService": "sagemaker.amazonaws.com"})]
    return needs + ([request("sagemaker:AddTags", job)] if req.tags else [])


def compile_jobs(service: SageMakerCompile, method: str, a: Mapping[str, Any], out: Any,
                 now: datetime) -> list[Request]:
    if method == "describe":
        return [request("sagemaker:DescribeProcessingJob", arn("sagemaker", f"processing-job/{a['job_name']}"))]
    job = arn("sagemaker", f"processing-job/{a['request'].job_name}")
    return [request("sagemaker:CreateProcessingJob", job, {"sagemaker:InstanceTypes": service.instance_type}),
            request("sagemaker:AddTags", job),  # job_request() always tags
            request("iam:PassRole", service.role_arn, {"iam:PassedToService": "sagemaker.amazonaws.com"})]


def neo(service: SageMakerNeo, method: str, a: Mapping[str, Any], out: Any, now: datetime) -> list[Request]:
    return [request("sagemaker:CreateCompilationJob", arn("sagemaker", f"compilation-job/{a['request'].job_name}")),
            request("iam:PassRole", service.role_arn, {"iam:PassedToService": "sagemaker.amazonaws.com"})]


def target(target_arn: str) -> str:
    """A deployment target in this account (the local stand-in spells its own region and account)."""
    kind, _, name = target_arn.rpartition(":")[2].partition("/")
    return arn("iot", f"{kind}/{name}")


def greengrass(gg: AwsGreengrass, method: str, a: Mapping[str, Any], out: Any, now: datetime) -> list[Request]:
    job = arn("iot", "job/*")
    if method in ("get_component", "create_component_version"):
        recipe = a.get("recipe") or {}
        name, version = a.get("name") or recipe.get("ComponentName"), a.get("version") or recipe.get("ComponentVersion")
        action = "GetComponent" if method == "get_component" else "CreateComponentVersion"
        return [request(f"greengrass:{action}", arn("greengrass", f"components:{name}:versions:{version}"))]
    if method == "create_deployment":
        # CreateDeployment has no resource type; it creates the IoT job on our behalf with our permissions.
        goal = target(a["target_arn"])
        return [request("greengrass:CreateDeployment", "*"), request("iot:CreateJob", job),
                request("iot:CreateJob", goal), request("iot:DescribeThingGroup", goal)
                if "thinggroup/" in goal else request("iot:DescribeThing", goal)]
    if method in ("get_deployment", "cancel_deployment"):
        action = "GetDeployment" if method == "get_deployment" else "CancelDeployment"
        found = [request(f"greengrass:{action}", arn("greengrass", f"deployments:{a['deployment_id']}"))]
        return found + ([request("iot:CancelJob", job)] if method == "cancel_deployment" else [])
    if method == "list_effective_deployments":
        return [request("greengrass:ListEffectiveDeployments", arn("greengrass", f"coreDevices:{a['thing_name']}"))]
    if method in ("thing_group_arn", "things_in_group"):
        action = "DescribeThingGroup" if method == "thing_group_arn" else "ListThingsInThingGroup"
        return [request(f"iot:{action}", arn("iot", f"thinggroup/{a['group_name']}"))]
    raise unmapped(gg, method)


def things(reg: AwsThingRegistry, method: str, a: Mapping[str, Any], out: Any, now: datetime) -> list[Request]:
    thing = arn("iot", f"thing/{a['thing_name']}")
    actions = {"thing_certificates": ("DescribeThing", "ListThingPrincipals"), "thing_attributes": ("DescribeThing",),
               "thing_groups": ("ListThingGroupsForThing",)}
    if method not in actions:
        raise unmapped(reg, method)
    return [request(f"iot:{action}", thing) for action in actions[method]]


def unwired(adapter: Any, method: str, a: Mapping[str, Any], out: Any, now: datetime) -> list[Request]:
    return [Request(UNWIRED, f"{type(adapter).__name__}.{method} (this function's AWS wiring refuses it)")]


def unmapped(adapter: Any, method: str) -> NotImplementedError:
    return NotImplementedError(f"no IAM mapping for {type(adapter).__name__}.{method}: add it to {Path(__file__).name}")


# adapter class -> (its port, the translation of its calls)
ADAPTERS: dict[type, tuple[type, Callable[..., list[Request]]]] = {
    DynamoStateStore: (ports.StateStore, dynamo),
    S3ObjectStore: (ports.ObjectStore, s3),
    SnsNotifier: (ports.Notifier, sns),
    AwsEventPublisher: (ports.EventPublisher, events),
    SageMakerRegistry: (ports.ModelRegistry, registry),
    SageMakerTraining: (ports.TrainingService, training),
    SageMakerCompile: (ports.CompileService, compile_jobs),
    SageMakerNeo: (ports.NeoCompiler, neo),
    AwsGreengrass: (ports.Greengrass, greengrass),
    AwsThingRegistry: (ports.ThingRegistry, things),
}


def port_methods(port: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in vars(port).items()
            if inspect.isfunction(fn) and not name.startswith("_")}


# ------------------------------------------------------------------ recording


@dataclass(frozen=True)
class Recorded:
    function: str
    call: str  # e.g. "state.put('periods', 't1')"
    request: Request


class Recorder:
    """Port calls made while a handler runs (set by `active`), as IAM requests of that function."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.function: str | None = None
        self.records: list[Recorded] = []
        self.clock = clock
        self.actions: dict[str, set[str]] = {}  # the outcomes each function's handler reported

    @contextmanager
    def active(self, function: str) -> Iterator[None]:
        outer, self.function = self.function, function
        try:
            yield
        finally:
            self.function = outer

    def handler(self, function: str, handle: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            with self.active(function):
                result = handle(*args, **kwargs)
            if isinstance(result, dict) and "action" in result:
                self.actions.setdefault(function, set()).add(str(result["action"]))
            return result
        return recorded


def short(args: Mapping[str, Any]) -> str:
    def one(v: Any) -> str:
        if isinstance(v, str | int | float | bool) or v is None:
            return repr(v)[:70]
        return type(v).__name__
    return ", ".join(one(v) for v in list(args.values())[:2])


class Recording:
    """Stands in for a double: forwards everything, and records the port calls it sees while a handler runs."""

    def __init__(self, double: Any, adapter: Any, path: str, recorder: Recorder) -> None:
        self._double, self._adapter, self._path, self._recorder = double, adapter, path, recorder
        port, translate = ADAPTERS.get(type(adapter), (None, unwired))
        self._translate: Callable[..., list[Request]] = translate
        self._methods = port_methods(port) if port else {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._double, name)
        if not callable(attr) or (self._methods and name not in self._methods):
            return attr
        if not self._methods and name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            outcome: Any = None
            try:
                outcome = attr(*args, **kwargs)
                return outcome
            except Exception as exc:
                outcome = exc
                raise
            finally:
                if self._recorder.function:
                    self._note(name, args, kwargs, outcome)
        return call

    def _note(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], outcome: Any) -> None:
        signature = self._methods.get(name)
        bound: dict[str, Any] = ({k: v for k, v in signature.bind(None, *args, **kwargs).arguments.items()
                                  if k != "self"} if signature else {str(i): v for i, v in enumerate(args)})
        now = getattr(self._double, "clock", self._recorder.clock)()  # due now or later: by the double's clock
        requests = self._translate(self._adapter, name, bound, outcome, now)
        label = f"{self._path}.{name}({short(bound)})"
        self._recorder.records += [Recorded(self._recorder.function or "", label, r) for r in requests]


def wire(double: Any, adapter: Any, recorder: Recorder, path: str = "") -> Any:
    """`double` (test deps) with every field that is an AWS adapter in `adapter` (the real deps) wrapped."""
    if dataclasses.is_dataclass(adapter) and not isinstance(adapter, type) and double is not None:
        changes = {f.name: wire(getattr(double, f.name), getattr(adapter, f.name), recorder,
                                f"{path}.{f.name}".lstrip("."))
                   for f in dataclasses.fields(adapter) if f.init}
        changed = {k: v for k, v in changes.items() if v is not getattr(double, k)}
        return replace(double, **changed) if changed else double
    if isinstance(adapter, tuple):
        return tuple(wire(d, a, recorder, f"{path}[{i}]") for i, (d, a) in enumerate(zip(double, adapter, strict=True)))
    is_adapter = type(adapter) in ADAPTERS or type(adapter).__module__.startswith("services.")
    if double is None or adapter is None or not is_adapter:
        return double
    return Recording(double, adapter, path, recorder)


def service_module(function: str) -> Any:
    code = functions()[function]["Properties"]["CodeUri"].strip("/").split("/")[-1]
    return importlib.import_module(f"services.{code}.app")


def aws_deps(function: str) -> Any:
    """The function's own composition root under its template environment (clients are created lazily: no AWS)."""
    env = {k: str(resolve(v)) for k, v in function_env(functions()[function]["Properties"]).items()}
    with mock.patch.dict(os.environ, {**env, "AWS_DEFAULT_REGION": REGION}):
        return service_module(function).aws_deps.__wrapped__()  # not the cached one


class Run:
    """One scenario: drives handlers on wrapped doubles and collects what they needed."""

    def __init__(self, tmp: Path, recorder: Recorder) -> None:
        self.tmp, self.recorder = tmp, recorder

    def wire(self, function: str, double: Any) -> Any:
        return wire(double, aws_deps(function), self.recorder)

    def handle(self, function: str) -> Callable[..., Any]:
        return self.recorder.handler(function, service_module(function).handle)

    def reached(self, function: str, *actions: str) -> None:
        """The scenario still takes the paths it was written for (else its calls would silently go unchecked)."""
        missed = set(actions) - self.recorder.actions.get(function, set())
        assert not missed, f"{function}'s scenario no longer reaches {sorted(missed)}: update it"

    @contextmanager
    def patched(self, deps: Any, *functions_: str) -> Iterator[None]:
        """The services' `handle`, wherever a test harness calls it, recorded and run on `deps` wired for its
        function."""
        with ExitStack() as stack:
            for function in functions_:
                handle, wired = self.handle(function), self.wire(function, deps)
                stack.enter_context(mock.patch.object(service_module(function), "handle",
                                                      lambda event, _, h=handle, d=wired: h(event, d)))
            yield
