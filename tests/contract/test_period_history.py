"""The turbines' recent periods (shared/usecases/turbine_periods.py) on every state store (DynamoDB on moto, SQLite, the
in-memory double): exactly once however stats messages repeat or reorder, bounded in count and in bytes, a period
split by a restart or a model swap, the score relative to its version's threshold; and drift_monitor keeping them."""

from __future__ import annotations

import json
import random
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.console_seed import stats_row
from nacelle.local.adapters.state import SqliteStateStore
from services.drift_monitor.app import handle
from shared.messages import StatsRow
from shared.ml.drift import LEVELS
from shared.ports import StateStore
from shared.records import PeriodHistory, PeriodSummary, load
from shared.usecases.alerts import AlertDeps, AlertPolicy
from shared.usecases.drift import DriftDeps
from shared.usecases.turbine_periods import (
    KEEP,
    MAX_ITEM_BYTES,
    PERIODS,
    history,
    manifest_threshold,
    merged,
    period_key,
    remember_period,
    summary_of,
)
from tests.fakes import Clock, MemoryRegistry, MemoryState, MemoryStore, RecordingEvents, RecordingNotifier

T0 = 1_772_323_200.0  # a multiple of the period
THRESHOLD = 0.05


def rows(n: int, thing: str = "wt-1", version: int = 3) -> list[StatsRow]:
    return [stats_row(thing, version, T0 + 60 * k, 0.0) for k in range(n)]


def stored(state: StateStore, thing: str = "wt-1") -> PeriodHistory:
    record = load(PeriodHistory, state.get(PERIODS, thing))
    assert record is not None
    return record


def test_a_redelivered_period_changes_nothing(state_store: StateStore) -> None:
    row = rows(1)[0]
    assert remember_period(state_store, row, THRESHOLD).action == "kept"
    before = state_store.get(PERIODS, "wt-1")
    assert remember_period(state_store, row, THRESHOLD).action == "duplicate"
    assert state_store.get(PERIODS, "wt-1") == before
    [period] = history(state_store, "wt-1")
    assert period.score[2] == pytest.approx(row.score_quantiles[LEVELS.index(0.5)] / THRESHOLD, rel=1e-5)  # median
    assert period.features["rps"] == pytest.approx([*(row.quantiles["rps"][LEVELS.index(q)] for q in (0.05, 0.5, 0.95)),
                                                    row.mean["rps"]], rel=1e-5)


def test_reordered_and_repeated_periods_end_as_in_order_and_stay_bounded(tmp_path: Path) -> None:
    state = SqliteStateStore(tmp_path / "state.db")
    ordered = rows(KEEP + 12)
    shuffled = ordered + ordered[:20]
    random.Random(7).shuffle(shuffled)
    reference = MemoryState()
    for row in ordered:
        remember_period(reference, row, THRESHOLD)
    for row in shuffled:
        remember_period(state, row, THRESHOLD)
    kept = history(state, "wt-1")
    assert [p.start for p in kept] == [r.period_start for r in ordered[-KEEP:]]  # the newest KEEP, in time order
    assert stored(state).periods == stored(reference).periods
    late = remember_period(state, ordered[0], THRESHOLD)  # older than every kept period: left out
    assert late.action == "duplicate" and len(history(state, "wt-1")) == KEEP


def wide(k: int, features: int = 300) -> StatsRow:
    names = [f"sensor_{i:03d}" for i in range(features)]
    q = [0.1 * j for j in range(len(LEVELS))]
    return replace(rows(1)[0], period_start=T0 + 60 * k, seq=k + 1, count=dict.fromkeys(names, 100),
                   mean=dict.fromkeys(names, 0.9), std=dict.fromkeys(names, 0.5), quantiles=dict.fromkeys(names, q))


def test_a_wide_history_keeps_to_its_byte_budget(tmp_path: Path) -> None:
    """300 features per period: the oldest periods go so that the item stays under MAX_ITEM_BYTES of JSON, and the
    store takes it and one more period."""
    kept: dict[str, PeriodSummary] = {}
    for k in range(40):
        kept = merged(kept, period_key(T0 + 60 * k, 3), summary_of(wide(k), THRESHOLD))
    size = len(json.dumps(PeriodHistory("wt-1", kept, 1).to_item(), separators=(",", ":")))
    assert size <= MAX_ITEM_BYTES and 5 < len(kept) < 40
    assert max(kept) == period_key(T0 + 60 * 39, 3) and all(len(p.features) == 300 for p in kept.values())
    state = SqliteStateStore(tmp_path / "state.db")
    state.put(PERIODS, "wt-1", PeriodHistory("wt-1", kept, 1).to_item())
    assert remember_period(state, wide(40), THRESHOLD).action == "kept"
    after = stored(state)
    assert max(after.periods) == period_key(T0 + 60 * 40, 3) and len(after.periods) == len(kept)


@pytest.mark.parametrize("state_store", ["dynamodb", "sqlite"], indirect=True)
def test_a_full_history_round_trips_and_takes_one_more_period(state_store: StateStore) -> None:
    """KEEP periods of the default spec's six features: a valid item, updated in place, the oldest period out."""
    kept: dict[str, PeriodSummary] = {}
    for row in rows(KEEP):
        kept = merged(kept, period_key(row.period_start, 3), summary_of(row, THRESHOLD))
    assert state_store.put(PERIODS, "wt-1", PeriodHistory("wt-1", kept, 1).to_item())
    assert stored(state_store).periods == kept  # every number reads back as written
    assert remember_period(state_store, rows(KEEP + 1)[-1], THRESHOLD).action == "kept"
    after = stored(state_store)
    assert after.rev == 2 and len(after.periods) == KEEP and max(after.periods) == period_key(T0 + 60 * KEEP, 3)
    assert min(after.periods) == period_key(T0 + 60, 3)


@pytest.mark.parametrize("state_store", ["sqlite", "memory"], indirect=True)
def test_a_period_split_by_a_restart_keeps_its_fuller_part_whatever_the_order(state_store: StateStore) -> None:
    row = rows(1)[0]
    short = replace(row, seq=row.seq + 1, windows=20, operating_windows=15, score_count=15,
                    count=dict.fromkeys(row.count, 15))
    remember_period(state_store, short, THRESHOLD)
    remember_period(state_store, row, THRESHOLD)
    other = MemoryState()
    remember_period(other, row, THRESHOLD)
    remember_period(other, short, THRESHOLD)
    assert [p.operating_windows for p in history(state_store, "wt-1")] == [row.operating_windows]
    assert stored(state_store).periods == stored(other).periods


def test_a_model_swap_within_a_period_keeps_both_versions_parts() -> None:
    state = MemoryState()
    old, new = stats_row("wt-1", 1, T0, 0.0), stats_row("wt-1", 2, T0, 1.0)
    remember_period(state, old, 0.04)
    remember_period(state, new, None)  # a version whose threshold is unknown: no relative score
    kept = history(state, "wt-1")
    assert [(p.model_version, p.threshold, bool(p.score)) for p in kept] == [(1, 0.04, True), (2, None, False)]


def test_turbines_do_not_share_a_history() -> None:
    state = MemoryState()
    remember_period(state, rows(1, "wt-1")[0], THRESHOLD)
    remember_period(state, rows(2, "wt-2")[1], THRESHOLD)
    assert len(history(state, "wt-1")) == 1 and len(history(state, "wt-2")) == 1
    assert history(state, "wt-3") == []


def test_concurrent_deliveries_lose_no_period(tmp_path: Path) -> None:
    state = SqliteStateStore(tmp_path / "state.db")
    batches = [rows(30)[i::3] for i in range(3)]
    threads = [threading.Thread(target=lambda b=b: [remember_period(state, r, THRESHOLD) for r in b]) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(history(state, "wt-1")) == 30


def test_manifest_threshold_takes_only_a_positive_finite_number() -> None:
    assert manifest_threshold({"threshold": {"value": 0.25}}) == 0.25
    bad: object
    for bad in ({}, {"threshold": 0.25}, {"threshold": {"value": "0.25"}}, {"threshold": {"value": True}},
                {"threshold": {"value": -1.0}}, {"threshold": {"value": float("inf")}}, [], None):
        assert manifest_threshold(bad) is None


def test_drift_monitor_keeps_every_period_even_without_a_baseline() -> None:
    """A version compiled before drift monitoring (no baseline) is not judged, but its periods reach the timeline with
    the score relative to the manifest's threshold."""
    clock, state, store = Clock(), MemoryState(), MemoryStore()
    store.put("compiled/g/3/manifest.json", json.dumps({"threshold": {"value": THRESHOLD}}).encode())
    deps = DriftDeps(AlertDeps(MemoryState(), state, MemoryRegistry(), RecordingNotifier(), clock, "g", AlertPolicy()),
                     state, store, RecordingEvents(clock))
    for row in rows(3):
        assert handle(dict(row.__dict__), deps)["action"] == "ignored"  # no baseline: not judged
    kept = history(state, "wt-1")
    assert len(kept) == 3 and all(p.threshold == THRESHOLD and p.score for p in kept)
    assert deps.baselines.reads == 1  # the manifest is read once for the baseline and the threshold
