"""Fleet scale: the per-message cost of anomaly_alert and deployment_status as history grows, and the event bus's
throughput. Goals: per-message cost at 100,000 vs 1,000 items of history <= 1.2; `bus_events_per_s` >= 1000.

The functions' handlers (services/anomaly_alert/app.py and services/deployment_status/app.py `handle`) are driven
with (a) the local adapters (SqliteStateStore, LocalNotifier) and (b) DynamoStateStore on moto (in-process
DynamoDB; SnsNotifier on moto's SNS), for a fleet of FLEET (10,000) turbines.

anomaly_alert: the alert history is filled to 1,000, 10,000 and 100,000 alerts (1 %, 10 %, 100 % of 100,000):
closed episodes spread over the last 80 days on random turbines. The first `alert_prefix` go through the handler
(an open and a close row each); the rest are bulk-written as the same items (the alert, its sighting, its rate slot,
the turbine's sequence record), made from the last handled episode's records (shared.records) with ids and times
moved. At each level, new episodes on random turbines are timed (an open and a close row each: two messages).

deployment_status: one fleet rollout across the 10,000 devices (the records a promotion leaves: RolloutRecord at
stage fleet naming them, its DeploymentRecord and FleetAssignment) receives a `Greengrass V2 Effective Deployment
Status Change` SUCCEEDED event (tests/events) per device, in random order. The history is the execution records in
the state table when an event arrives: this rollout's devices that already reported (the first `rollout_prefix`
through the handler, the others bulk-written as the items it writes: their ExecutionRecord and the deployment's
FleetProgress count) plus earlier rollouts' ExecutionRecords. Events are timed at 1,000 records (10 % of the fleet
reported), 10,000 (half of it, plus 5,000 earlier records) and 100,000 (all but the timed and the last device, plus
earlier records); the last device's event, which checks every device's execution once and completes the rollout,
is printed apart (`..._completing_event_ms`), and the rollout is checked to be done.

Printed per function, adapter (`sqlite`, `dynamodb`) and level: `..._ms_at_<history>` (mean per message) and
`..._msgs_per_s_at_<history>`; for DynamoDB also the requests and the items read per message (what the service
bills and what its latency follows). `<fn>_<adapter>_cost_growth` is the ratio of the per-message cost at 100,000
to the cost at 1,000 (same run); `alert_cost_growth` and `deployment_status_cost_growth` are the worse adapter's.
Each level's messages are timed in BLOCKS (5) blocks and the fastest block is printed; the blocks run with the
garbage collector's existing objects frozen, so the benchmark's own heap (moto keeps its tables in memory) costs
nothing. Bulk-written items go straight into the store's table (SQLite: one transaction; moto: its backend, as the
adapter serialises them), not through the handlers. moto's Query sorts the whole table to find a partition; while
it runs one on a table's key the table shows it that partition alone (partition_queries), as DynamoDB reads only
the partition. moto's cost per item returned (~1 ms) is far above DynamoDB's, so a growth in items read weighs
more on moto.

`bus_events_per_s`: PRODUCERS (4) threads each putting BUS_PUTS events one at a time through
nacelle.local.runtime.bus.EventBus.put (each returns once its event is committed) on one bus; also the
single-thread rate.

Then a local fleet of 200 turbines (benchmarks/scale_fleet.py: light devices on the real local stack):
`approve_to_fleet_200_seconds` (goal <= 60 s) and `messages_lost_200_turbines` over 5 minutes with 10 concurrent
faults (goal 0), with the CPU each part used.

Run alone: `.venv/bin/python -m benchmarks.bench_scale` (about 15 minutes on 2 cores; `--quick`: 1,000 and 10,000
only, fewer messages, and 40 turbines for a minute, about 4 minutes; `--handlers-only` / `--fleet-only`: one half).
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nacelle.local.adapters.greengrass import LocalGreengrass
from nacelle.local.adapters.notifier import LocalNotifier
from nacelle.local.adapters.state import SqliteStateStore, _dumps
from nacelle.local.runtime.bus import EventBus, Rule
from services.anomaly_alert import app as alert_app
from services.deployment_status import app as status_app
from shared.ports import Envelope, Notifier, StateStore
from shared.records import (
    DeploymentRecord,
    EpisodeAlert,
    EpisodeSighting,
    ExecutionRecord,
    FleetAssignment,
    FleetProgress,
    RateSlot,
    RolloutRecord,
    load,
)
from shared.usecases.alerts import ALERTS, AlertDeps, AlertPolicy, sighting_key
from shared.usecases.rollout_state import RolloutDeps
from tests.fakes import MemoryRegistry, MemoryStore

FLEET = 10_000
LEVELS = (1_000, 10_000, 100_000)
GOAL_GROWTH = 1.2
GOAL_BUS = 1000.0
GROUP = "nacelle-turbine"
EVENTS = Path(__file__).resolve().parents[1] / "tests" / "events"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
HISTORY_DAYS = 80.0
PRODUCERS, BUS_PUTS = 4, 1000
BLOCKS = 5  # each level's messages are timed in this many blocks; the fastest block counts
REGION = "eu-west-1"


@dataclass(frozen=True)
class Sizes:
    levels: tuple[int, ...]
    alert_prefix: int  # history episodes that go through the handler (the rest are bulk-written)
    rollout_prefix: int  # devices whose status events go through the handler before the first timed ones
    alert_timed: int  # episodes timed per level (two messages each)
    status_timed: int  # status events timed per level


# moto's calls cost ~50x a SQLite call (and a call reading the 10,000-device rollout record ~0.7 s): fewer messages.
FULL = {"sqlite": Sizes(LEVELS, 1_000, 1_000, 300, 300), "dynamodb": Sizes(LEVELS, 200, 20, 100, 20)}
QUICK = {"sqlite": Sizes(LEVELS[:2], 200, 200, 50, 50), "dynamodb": Sizes(LEVELS[:2], 50, 5, 20, 5)}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, epoch: float) -> None:
        self.now = datetime.fromtimestamp(epoch, UTC)


def turbine(i: int) -> str:
    return f"turbine-{i % FLEET:05d}"


# -- the two adapters ------------------------------------------------------------------------------------------------
@dataclass
class Adapter:
    name: str
    stores: Callable[[str], StateStore]  # table name -> store
    notifier: Notifier
    bulk: Callable[[StateStore, list[tuple[str, str, dict[str, Any]]]], None]
    counts: dict[str, int] = field(default_factory=dict)  # DynamoDB: requests and items read (billed reads)


@dataclass(frozen=True)
class Figure:
    ms: float  # mean per message
    requests: float = 0.0  # DynamoDB requests per message
    items_read: float = 0.0  # DynamoDB items read per message (GetItem found, Query returned)


def fastest(figures: list[Figure]) -> Figure:
    """The block least disturbed by whatever else the machine runs."""
    return min(figures, key=lambda f: f.ms)


@contextmanager
def measured(adapter: Adapter, messages: int) -> Iterator[list[Figure]]:
    """Time the block (the garbage collector's existing objects frozen, so the benchmark's own heap, moto's
    table among it, costs nothing) and count its DynamoDB calls; the Figure is appended on exit."""
    out: list[Figure] = []
    before = dict(adapter.counts)
    gc.collect()
    gc.freeze()
    try:
        t0 = time.perf_counter()
        yield out
        elapsed = time.perf_counter() - t0
    finally:
        gc.unfreeze()
    delta = {k: v - before.get(k, 0) for k, v in adapter.counts.items()}
    out.append(Figure(elapsed * 1000 / messages, delta.get("requests", 0) / messages,
                      delta.get("items_read", 0) / messages))


def sqlite_adapter(root: Path) -> Adapter:
    def bulk(store: StateStore, items: list[tuple[str, str, dict[str, Any]]]) -> None:
        assert isinstance(store, SqliteStateStore)
        with sqlite3.connect(store.db_path) as conn:  # the adapter's own serialisation, in one transaction
            conn.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?)",
                             [(pk, sk, _dumps(item)) for pk, sk, item in items])

    return Adapter("sqlite", lambda table: SqliteStateStore(root / f"{table}.db"),
                   LocalNotifier(None, root / "notifications.jsonl"), bulk)


def dynamodb_adapter() -> Adapter:
    import boto3

    from shared.aws.dynamodb import DynamoStateStore, _item
    from shared.aws.sns import SnsNotifier

    client = boto3.client("dynamodb", region_name=REGION)
    counts = {"requests": 0, "items_read": 0}

    def count(model: Any, parsed: Mapping[str, Any], **_: Any) -> None:
        counts["requests"] += 1
        counts["items_read"] += (1 if parsed.get("Item") else 0) if model.name == "GetItem" else \
            int(parsed.get("Count", 0)) if model.name == "Query" else 0

    client.meta.events.register("after-call.dynamodb", count)
    topic = boto3.client("sns", region_name=REGION).create_topic(Name="nacelle-alerts")["TopicArn"]

    def table(name: str) -> StateStore:
        client.create_table(
            TableName=name, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"}])
        return DynamoStateStore(name, client)

    def bulk(store: StateStore, items: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Straight into moto's table, as the adapter serialises them (BatchWriteItem requests would take moto
        minutes for 100,000 alerts' items)."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        assert isinstance(store, DynamoStateStore)
        backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION]
        for pk, sk, item in items:
            backend.put_item(store.table, _item({**item, "pk": pk, "sk": sk}))

    return Adapter("dynamodb", table, SnsNotifier({"alerts": topic, "approvals": topic},
                                                  boto3.client("sns", region_name=REGION)), bulk, counts)


@contextmanager
def moto_env() -> Iterator[None]:
    from moto import mock_aws

    saved = {k: os.environ.get(k) for k in ("AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_DEFAULT_REGION=REGION, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_SESSION_TOKEN="testing")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    undo = partition_queries()
    try:
        with mock_aws():
            yield
    finally:
        undo()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def partition_queries() -> Callable[[], None]:
    """DynamoDB's Query reads the queried partition only; moto's sorts every item of the table to find it (its cost
    grows with the table, an artefact of the double). While moto runs a Query on a table's own key, the table shows
    it that partition alone: same results, the real service's cost shape. Returns the undo."""
    from moto.dynamodb.models.table import Table

    original = Table.query

    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        if hash_key is None or (len(args) > 6 and args[6]):  # args[6]: index_name
            return original(self, hash_key, *args, **kwargs)
        items = self.items
        self.items = defaultdict(dict, {hash_key: items[hash_key]} if hash_key in items else {})
        try:
            return original(self, hash_key, *args, **kwargs)
        finally:
            self.items = items

    Table.query = query  # type: ignore[method-assign]

    def undo() -> None:
        Table.query = original  # type: ignore[method-assign]

    return undo


# -- anomaly_alert ---------------------------------------------------------------------------------------------------
class AlertRun:
    def __init__(self, adapter: Adapter, seed: int) -> None:
        self.adapter = adapter
        self.clock = Clock(NOW)
        self.deps = AlertDeps(alerts=adapter.stores("alerts"), devices=adapter.stores("state"),
                              registry=MemoryRegistry(), notifier=adapter.notifier, clock=self.clock, group=GROUP,
                              policy=AlertPolicy())
        self.random = random.Random(seed)
        self.seq: dict[str, int] = {}  # per turbine: the anomalies stream's last sequence number
        self.history = 0
        self.template: str | None = None  # alert id of the last handled episode

    def row(self, thing: str, episode: str, kind: str, t: float) -> dict[str, Any]:
        self.seq[thing] = self.seq.get(thing, 0) + 1
        return {"v": 2, "kind": kind, "episode_id": episode, "turbine_id": thing, "features": ["gen_temp", "rps"],
                "score": 3.4, "contributions": {"gen_temp": 0.64, "rps": 0.34, "voltage": 0.02}, "missing": [],
                "started_at": t - 30, "opened_at": t, "last_flagged_at": t + (200 if kind == "close" else 0),
                "ended_at": t + 240 if kind == "close" else None, "model_version": 1, "seq": self.seq[thing],
                "thing_name": thing, "received_at": int(t * 1000), "client_id": thing}

    def episode(self, thing: str, t: float) -> str:
        """An open row at t, a close row at t + 240, through the handler."""
        episode = f"{thing}-{int(t * 1000)}"
        for kind, at in (("open", t), ("close", t + 240)):
            self.clock.set(at)
            result = alert_app.handle(self.row(thing, episode, kind, t), self.deps)
            if result["action"] == "rejected":
                raise AssertionError(f"{thing} {kind}: {result}")
        return f"episode:{thing}:{episode}"

    def past(self) -> float:
        return NOW.timestamp() - self.random.uniform(1.0, HISTORY_DAYS) * 86400.0

    def fill(self, total: int, prefix: int) -> None:
        """History up to `total` alerts: through the handler while below `prefix`, then bulk-written."""
        while self.history < min(total, prefix):
            self.template = self.episode(turbine(self.random.randrange(FLEET)), self.past())
            self.history += 1
        if self.history >= total:
            return
        assert self.template is not None, "the first alerts go through the handler"
        store = self.deps.alerts
        template = load(EpisodeAlert, store.get(ALERTS, self.template))
        assert template is not None and template.status == "closed" and template.resolution == "sent"
        sightings = store.query(f"turbine#{template.turbine_id}")
        sighting = next(EpisodeSighting.from_item(s) for s in sightings if s["alert_id"] == template.alert_id)
        base = template.since
        window = math.floor(base / 3600.0) * 3600.0
        slot = load(RateSlot, store.get(f"rate#{template.turbine_id}", str(int(window))))
        assert slot is not None
        items: list[tuple[str, str, dict[str, Any]]] = []
        streams: dict[str, int] = {}
        for _ in range(total - self.history):
            thing, t = turbine(self.random.randrange(FLEET)), self.past()
            episode = f"{thing}-{int(t * 1000)}"
            alert_id = f"episode:{thing}:{episode}"
            delta = t - base
            alert = replace(moved(template, delta, base), alert_id=alert_id, turbine_id=thing, episode_id=episode)
            seen = moved(sighting, delta, base)
            own_window = math.floor(seen.seen_at / 3600.0) * 3600.0
            items += [(ALERTS, alert_id, alert.to_item()),
                      (f"turbine#{thing}", sighting_key(seen.seen_at, episode), replace(seen, alert_id=alert_id)
                       .to_item()),
                      (f"rate#{thing}", str(int(own_window)),
                       replace(moved(slot, delta, base), episodes=(alert_id,), rev=1).to_item())]
            self.seq[thing] = self.seq.get(thing, 0) + 2
            streams[thing] = self.seq[thing]
        self.adapter.bulk(store, items)
        self.adapter.bulk(self.deps.devices, [
            ("streams", f"{thing}#anomalies", {"thing_name": thing, "stream": "anomalies", "high": high,
                                                "missing": [], "lost_uncounted": 0, "gaps": 0, "rev": high})
            for thing, high in streams.items()])
        self.history = total

    def timed(self, episodes: int) -> Figure:
        """Per message of `episodes` new episodes (open + close) on random turbines, now."""
        start = NOW.timestamp() + self.history  # after every earlier one
        blocks = []
        for block in range(BLOCKS):
            things = [turbine(self.random.randrange(FLEET)) for _ in range(episodes // BLOCKS)]
            with measured(self.adapter, 2 * len(things)) as figure:
                for i, thing in enumerate(things):
                    self.episode(thing, start + 5 * (i + block * episodes))
            blocks += figure
        return fastest(blocks)


def moved(record: Any, delta: float, base: float) -> Any:
    """`record` with every time of it (a number within a year of `base`) moved by `delta` seconds."""
    changes = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value - base) < 400 * 86400:
            changes[f.name] = type(value)(value + delta)
    return replace(record, **changes)


# -- deployment_status -----------------------------------------------------------------------------------------------
class RolloutRun:
    VERSION = 12
    DEPLOYMENT = "fleet-deployment-v12"

    def __init__(self, adapter: Adapter, root: Path, seed: int) -> None:
        self.adapter = adapter
        self.clock = Clock(NOW)
        self.random = random.Random(seed)
        state = adapter.stores("rollout-state")
        # Not on a status event's path (they serve stage changes): the bucket, Greengrass, the scheduler.
        greengrass = LocalGreengrass(root / f"{adapter.name}-greengrass.db", clock=self.clock)
        events = EventBus(root / f"{adapter.name}-bus.db", [])
        self.deps = RolloutDeps(MemoryStore("nacelle-data"), state, MemoryRegistry(), adapter.notifier, greengrass,
                                events, GROUP, "1.0.0", "nacelle-canary", "nacelle-fleet", soak_s=600.0,
                                canary_timeout_s=3600.0, stuck_timeout_s=3600.0, clock=self.clock)
        self.things = [turbine(i) for i in range(FLEET)]
        self.order = self.random.sample(self.things, FLEET)  # the devices report in any order
        self.reported = 0
        self.earlier = 0  # execution records of earlier rollouts
        self.template = json.loads((EVENTS / "greengrass_deployment_succeeded_older_spelling.json").read_text())
        pk = f"group#{GROUP}"
        components = {"nacelle.model": {"componentVersion": f"{self.VERSION}.0.0"}}
        state.put(pk, f"rollout#{self.VERSION}", RolloutRecord(
            self.VERSION, "fleet", components=components, canary_deployment_id="canary-deployment-v12",
            canary_started_at=NOW.timestamp() - 7200, canary_things=(turbine(0),),
            fleet_deployment_id=self.DEPLOYMENT, fleet_started_at=NOW.timestamp() - 60,
            fleet_things=tuple(self.things)).to_item())
        state.put(pk, f"deployment#{self.DEPLOYMENT}", DeploymentRecord(self.DEPLOYMENT, self.VERSION, "fleet")
                  .to_item())
        state.put(pk, "fleet", FleetAssignment(self.VERSION, components, self.DEPLOYMENT, "promotion", previous=11,
                                               since=NOW.timestamp() - 60, generation=11).to_item())

    def event(self, thing: str, at: float) -> dict[str, Any]:
        event = copy.deepcopy(self.template)
        event["id"] = f"status-{thing}-{int(at * 1000)}"
        event["time"] = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event["resources"] = [f"arn:aws:greengrass:{REGION}:123456789012:coreDevices:{thing}"]
        event["detail"]["deployment-id"] = self.DEPLOYMENT
        return event

    def report(self, count: int) -> None:
        for thing in self.order[self.reported:self.reported + count]:
            self.reported += 1
            at = NOW.timestamp() + self.reported
            self.clock.set(at)
            result = status_app.handle(self.event(thing, at), self.deps)
            if result["action"] not in ("recorded", "done"):
                raise AssertionError(f"{thing}: {result}")

    def fill(self, records: int, reported: int, prefix: int) -> None:
        """The rollout to `reported` devices (the first `prefix` through the handler, then the items it writes:
        each device's ExecutionRecord and the deployment's FleetProgress count), then earlier rollouts' records
        up to `records` in all."""
        self.report(min(reported, prefix) - self.reported)
        pk, key = f"group#{GROUP}", f"succeeded#{self.DEPLOYMENT}"
        items = []
        if self.reported < reported:
            at = NOW.timestamp() + self.reported
            for thing in self.order[self.reported:reported]:
                items.append((f"device#{thing}", f"deployment#{self.DEPLOYMENT}", ExecutionRecord(
                    self.DEPLOYMENT, thing, "SUCCEEDED", "", (), at, at).to_item()))
            counted = load(FleetProgress, self.deps.state.get(pk, key))
            assert counted is not None and counted.succeeded == self.reported, "the handler counts every success"
            items.append((pk, key, FleetProgress(self.DEPLOYMENT, reported).to_item()))
            self.reported = reported
        while self.reported + self.earlier < records:
            old = f"fleet-deployment-v{1 + self.earlier // FLEET}"
            thing = turbine(self.earlier)
            at = NOW.timestamp() - 86400.0 * (30 - self.earlier // FLEET)
            items.append((f"device#{thing}", f"deployment#{old}", ExecutionRecord(
                old, thing, "SUCCEEDED", "", (), at, at).to_item()))
            self.earlier += 1
        self.adapter.bulk(self.deps.state, items)

    def timed(self, count: int) -> Figure:
        """Per event of the next `count` devices' events."""
        if count < BLOCKS:
            with measured(self.adapter, count) as figure:
                self.report(count)
            return figure[0]
        blocks = []
        for block in range(BLOCKS):
            size = count // BLOCKS + (count % BLOCKS if block == BLOCKS - 1 else 0)
            with measured(self.adapter, size) as figure:
                self.report(size)
            blocks += figure
        return fastest(blocks)

    def stage(self) -> str:
        record = load(RolloutRecord, self.deps.state.get(f"group#{GROUP}", f"rollout#{self.VERSION}"))
        return "" if record is None else record.stage


# -- runs ------------------------------------------------------------------------------------------------------------
def scale(adapter: Adapter, root: Path, sizes: Sizes, echo: Callable[[str], None]) -> dict[str, dict[int, Figure]]:
    """Per-message figures at each level, of both functions (and the rollout's completing event, at level 0)."""
    out: dict[str, dict[int, Figure]] = {"alert": {}, "deployment_status": {}}
    alerts = AlertRun(adapter, seed=1)
    for level in sizes.levels:
        t0 = time.perf_counter()
        alerts.fill(level, sizes.alert_prefix)
        echo(f"{adapter.name}: alert history {level} in {time.perf_counter() - t0:.1f} s")
        out["alert"][level] = alerts.timed(sizes.alert_timed)
    rollout = RolloutRun(adapter, root, seed=2)
    for level in sizes.levels:  # devices reported before the timed events: 10 %, half, all but the timed and last
        reported = FLEET // 10 if level == min(sizes.levels) else FLEET // 2
        if level == max(sizes.levels):
            reported = FLEET - sizes.status_timed - 1
        t0 = time.perf_counter()
        rollout.fill(level, reported, sizes.rollout_prefix)
        echo(f"{adapter.name}: deployment history {level} ({rollout.reported} reported) in "
             f"{time.perf_counter() - t0:.1f} s")
        out["deployment_status"][level] = rollout.timed(sizes.status_timed)
    out["deployment_status"][0] = rollout.timed(1)  # the last device: the rollout is done
    if rollout.stage() != "done":
        raise AssertionError(f"every device reported but the rollout is {rollout.stage()}")
    return out


def bus_rate(root: Path, producers: int, puts: int) -> float:
    """Durable events per second through EventBus.put from `producers` threads."""
    bus = EventBus(root / f"bus-{producers}.db", [Rule("audit", "audit", {"source": ["nacelle"]})])
    barrier = threading.Barrier(producers + 1)

    def produce(base: int) -> None:
        barrier.wait()
        for n in range(base, base + puts):
            bus.put(Envelope("nacelle", "Ping", {"n": n}))

    threads = [threading.Thread(target=produce, args=(i * puts,)) for i in range(producers)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    stored = bus.stats()["events"]
    bus.close()
    if stored != producers * puts:
        raise AssertionError(f"{stored} events stored of {producers * puts}")
    return producers * puts / elapsed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sizes = QUICK if "--quick" in args else FULL
    if "--fleet-only" in args:
        return _fleet(args)
    echo: Callable[[str], None] = lambda m: print(f"# {m}", flush=True)  # noqa: E731
    results: dict[str, dict[str, dict[int, Figure]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results["sqlite"] = scale(sqlite_adapter(root / "sqlite"), root, sizes["sqlite"], echo)
        with moto_env():
            results["dynamodb"] = scale(dynamodb_adapter(), root, sizes["dynamodb"], echo)
        bus = bus_rate(root, PRODUCERS, BUS_PUTS)
        single = bus_rate(root, 1, BUS_PUTS // 2)
    levels = sizes["sqlite"].levels
    low, high = min(levels), max(levels)
    growth = {}
    for fn in ("alert", "deployment_status"):
        for adapter, per_fn in results.items():
            for level, figure in per_fn[fn].items():
                name = f"{fn}_{adapter}"
                if level == 0:
                    print(f"{name}_completing_event_ms={figure.ms:.1f}")
                    continue
                print(f"{name}_ms_at_{level}={figure.ms:.3f}")
                print(f"{name}_msgs_per_s_at_{level}={1000 / figure.ms:.0f}")
                if adapter == "dynamodb":
                    print(f"{name}_requests_per_msg_at_{level}={figure.requests:.2f}")
                    print(f"{name}_items_read_per_msg_at_{level}={figure.items_read:.2f}")
        for adapter, per_fn in results.items():
            print(f"{fn}_{adapter}_cost_growth={per_fn[fn][high].ms / per_fn[fn][low].ms:.2f}")
        growth[fn] = max(per_fn[fn][high].ms / per_fn[fn][low].ms for per_fn in results.values())
    print(f"alert_cost_growth={growth['alert']:.2f}")
    print(f"deployment_status_cost_growth={growth['deployment_status']:.2f}")
    print(f"bus_events_per_s={bus:.0f}")
    print(f"bus_single_producer_events_per_s={single:.0f}")
    print(f"scale_goal_growth={GOAL_GROWTH:g}")
    print(f"bus_goal_events_per_s={GOAL_BUS:g}", flush=True)
    ok = max(growth.values()) <= GOAL_GROWTH and bus >= GOAL_BUS
    fleet_ok = "--handlers-only" in args or _fleet(args) == 0
    return 0 if ok and fleet_ok else 1


def _fleet(args: list[str]) -> int:
    from benchmarks import scale_fleet

    return scale_fleet.main(args)


if __name__ == "__main__":
    sys.exit(main())
