"""drift_monitor: each detector's period statistics (turbines/<thing>/stats) against the training baseline of the model
version it runs; one drift alert per drift of a turbine, and retraining when drift persists across the fleet.

Judging a period (docs/fleet.md "Drift monitoring"): every series (each feature, and the anomaly score) with at
least `min_windows` values is compared, as a quantile sketch (shared/ml/drift.py), with
* the training baseline stored in the version's bundle: "far from training" at a distance of at least
  max(min_distance, fleet_factor x the baseline's tolerance of the series), for the anomaly score at least
  score_min_distance too. Turbines differ from one another; the tolerance is how far one held-out training
  turbine's period lay from the other turbines' data (a few training turbines show less of it in the score than a
  fleet has);
* the turbine's own reference, the mean sketch (the Wasserstein barycentre) of its first `reference_periods` judged
  periods with that model version: "changed" at a distance of at least `change_threshold`.
A period drifts when any series is far or changed. `alert_periods` consecutive drifting periods (in period order)
raise one drift alert naming the series and their distances; as many consecutive calm periods resolve it.

Exactly once and O(1) per message: the turbine's one state item (pk "drift", sk <thing>) is read and written back
conditionally on its revision; a period it already holds (a redelivery) changes nothing, a late one takes its place in
the period order. The alert is an item of the alert table, created once and claimed before each notification is sent
(the machinery of alerts.py); a claim a dead function left is given back after STALE_CLAIM_S by the turbine's next
row or a redelivery, so that every notification is sent at least once. A version's baseline is read once
(compiled/<group>/<version>/manifest.json) and kept; stats of a version without one (an older bundle, a version never
compiled) are logged and left.
Every period, judged or not, also goes to the turbine's recent periods (turbine_periods.py), which the operator
console's timeline draws.

Retraining: a drifting turbine has an entry in the small index pk "drift-open" (what is drifting now, never the
history), with its latest judged period. When one of them has drifted for `retrain_after_s` (sample time), at most
once per period and version, the policy counts the turbines of the index drifting that long with the same model
version and judged within RECENT_S; with at least `retrain_turbines` of them
and `retrain_min_captured_hours` of normal data captured on them since their drift began (raw/capture/, the span of
the files' rows), it asks for a retrain check once per model version and tells the operators at least once (the
existing debounced retraining policy then trains on every accepted file: the history plus the captured data).
Approving the new version stays a person's decision. A turbine whose drift the version was itself trained on (its
job took an earlier drift request naming the turbine) does not count again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any

import numpy as np

from shared import settings as defaults
from shared.capture import CAPTURE_PREFIX, NORMAL, CaptureName
from shared.errors import BundleError, ConfigurationError, ObjectNotFound
from shared.events import NACELLE_SOURCE, RETRAIN_CHECK
from shared.messages import BadMessage, StatsRow
from shared.ml.drift import BASELINE_KEY, LEVELS, Baseline, Distances, Summary, distances, scale, sketch_distance
from shared.observability import correlate, logger
from shared.ports import Envelope, EventPublisher, ObjectStore, StateStore
from shared.records import DriftAlert, DriftState, load
from shared.usecases import state_keys as sk
from shared.usecases.alerts import (
    ALERTS,
    STALE_CLAIM_S,
    AlertDeps,
    _attributes,
    _claim,
    _iso,
    _release_stale_claims,
    _send,
)
from shared.usecases.outcome import Outcome
from shared.usecases.turbine_periods import manifest_threshold, remember_period

DRIFT = "drift"  # pk of the turbines' drift states (state table)
DRIFTING = "drift-open"  # pk of the index of drifting turbines, sk <thing>
RETRAIN = sk.DRIFT_RETRAIN  # sk (under the group's pk) of the retraining request of a model version
HISTORY = 12  # judged periods kept per turbine
SCORE = "anomaly score"  # how messages name the score
NAMED = 3  # series a subject names at most
MAX_ATTEMPTS = 20  # optimistic-concurrency retries of the state item
BASELINE_RETRY_S = 300.0  # a version without a baseline is looked for again after this
RECENT_S = 6 * 3600.0  # a drifting turbine counts towards retraining while its last judged period is this recent


@dataclass(frozen=True)
class DriftPolicy:
    min_windows: int = defaults.DRIFT_MIN_WINDOWS
    fleet_factor: float = defaults.DRIFT_FLEET_FACTOR
    min_distance: float = defaults.DRIFT_MIN_DISTANCE
    score_min_distance: float = defaults.DRIFT_SCORE_MIN_DISTANCE
    change_threshold: float = defaults.DRIFT_CHANGE_THRESHOLD
    reference_periods: int = defaults.DRIFT_REFERENCE_PERIODS
    alert_periods: int = defaults.DRIFT_ALERT_PERIODS
    retrain_turbines: int = defaults.DRIFT_RETRAIN_TURBINES
    retrain_after_s: float = defaults.DRIFT_RETRAIN_AFTER_S
    retrain_min_captured_hours: float = defaults.DRIFT_RETRAIN_MIN_CAPTURED_HOURS
    retention_s: float = defaults.ALERT_RETENTION_S

    def __post_init__(self) -> None:
        if (self.min_windows < 1 or self.reference_periods < 1 or not 1 <= self.alert_periods <= HISTORY
                or self.retrain_turbines < 1 or min(self.fleet_factor, self.change_threshold) <= 0
                or min(self.min_distance, self.score_min_distance, self.retrain_after_s,
                       self.retrain_min_captured_hours) < 0):
            raise ConfigurationError(f"invalid drift policy {self}: counts >= 1 (alert_periods <= {HISTORY}), "
                                     "factor and change threshold > 0, the rest >= 0")


class BaselineCache:
    """The baseline of each model version, read once; a version without one is looked for again after a while."""

    def __init__(self, retry_s: float = BASELINE_RETRY_S) -> None:
        self.retry_s = retry_s
        self._found: dict[int, Baseline] = {}
        self._missing: dict[int, tuple[float, str]] = {}  # version -> (when, why)
        self._thresholds: dict[int, float | None] = {}  # from the same manifest (the console's timeline)
        self._jobs: dict[int, str | None] = {}  # the training job of each version (its lineage)
        self.reads = 0

    def threshold(self, version: int, store: ObjectStore, group: str, now: float) -> float | None:
        """The version's threshold on its raw score, None when unknown (read with the baseline)."""
        self.get(version, store, group, now)
        return self._thresholds.get(version)

    def job(self, version: int, store: ObjectStore, group: str, now: float) -> str | None:
        """The training job that made the version, None when unknown (read with the baseline)."""
        self.get(version, store, group, now)
        return self._jobs.get(version)

    def get(self, version: int, store: ObjectStore, group: str, now: float) -> Baseline | str:
        """The baseline, or why there is none."""
        if version in self._found:
            return self._found[version]
        missing = self._missing.get(version)
        if missing is not None and now - missing[0] < self.retry_s:
            return missing[1]
        key = f"compiled/{group}/{version}/manifest.json"
        self.reads += 1
        try:
            manifest = json.loads(store.get(key))
            self._thresholds[version] = manifest_threshold(manifest)
            lineage = manifest.get("lineage") if isinstance(manifest, dict) else None
            self._jobs[version] = str(lineage.get("job_name") or "") or None if isinstance(lineage, dict) else None
            if not isinstance(manifest, dict) or BASELINE_KEY not in manifest:
                raise BundleError(f"{key} has no {BASELINE_KEY} (a bundle trained before drift monitoring)")
            baseline = Baseline.from_dict(manifest[BASELINE_KEY], f"{key}: {BASELINE_KEY}")
        except ObjectNotFound:
            why = f"{key} does not exist (a version never compiled)"
        except (BundleError, ValueError) as exc:
            why = str(exc)
        else:
            self._found[version] = baseline
            self._missing.pop(version, None)
            return baseline
        self._missing[version] = (now, why)
        return why


@dataclass
class DriftDeps:
    alerts: AlertDeps  # the alert table, notifier, clock and group (drift alerts live with the others)
    state: StateStore  # the state table: turbine states, the drifting index, retraining requests
    store: ObjectStore  # compiled bundles' manifests, raw/capture/
    events: EventPublisher  # the retrain check
    policy: DriftPolicy = field(default_factory=DriftPolicy)
    baselines: BaselineCache = field(default_factory=BaselineCache)

    @property
    def group(self) -> str:
        return self.alerts.group

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.alerts.clock


@dataclass(frozen=True)
class Verdict:
    """One period judged: per series the distance to the training baseline and the change from the turbine's
    reference (None: not judged), and which of them are over their thresholds."""

    distances: dict[str, float]
    changes: dict[str, float]
    far: dict[str, float]
    changed: dict[str, float]
    ratio: float = 0.0  # the largest distance or change over its threshold (>= 1: drifting)

    @property
    def drifting(self) -> bool:
        return bool(self.far or self.changed)

    def features(self) -> tuple[str, ...]:
        return tuple(sorted(n for n in {*self.far, *self.changed} if n != SCORE))


# -- the message -----------------------------------------------------------------------------------------
def summaries(row: StatsRow) -> tuple[dict[str, Summary], Summary | None]:
    """The row's sketches (the message definition checked their shapes)."""
    if tuple(row.levels) != LEVELS:
        raise BadMessage(f"stats levels {row.levels[:3]}... are not the sketch levels {list(LEVELS[:3])}...")
    features = {n: Summary(row.count[n], row.mean[n], row.std[n], tuple(row.quantiles[n])) for n in row.count}
    score = (Summary(row.score_count, row.score_mean or 0.0, row.score_std or 0.0, tuple(row.score_quantiles))
             if row.score_count else None)
    return features, score


def period_key(start: float) -> str:
    return f"{start:015.3f}"  # sorts by time as text


def on_stats(row: StatsRow, deps: DriftDeps) -> Outcome:
    if row.turbine_id != row.thing_name:  # validate() refuses it; this guards rows built in code
        raise BadMessage(f"stats on turbines/{row.thing_name}/stats claim turbine {row.turbine_id!r}")
    thing, version = row.thing_name, row.model_version
    correlate(turbine_id=thing, model_version=version)
    if version is None:
        return Outcome("ignored", f"{thing}: stats of a detector without a model")
    now = deps.clock().timestamp()
    remember_period(deps.state, row, deps.baselines.threshold(version, deps.store, deps.group, now))  # the timeline
    baseline = deps.baselines.get(version, deps.store, deps.group, now)
    if isinstance(baseline, str):
        logger.warning("stats of a model version without a drift baseline", thing_name=thing, reason=baseline)
        return Outcome("ignored", f"{thing}: no drift baseline for v{version}: {baseline}")
    try:
        features, score = summaries(row)
    except BadMessage as exc:
        logger.warning("stats not comparable", thing_name=thing, reason=exc.reason)
        return Outcome("ignored", f"{thing}: {exc.reason}")
    judged = distances(features, score, baseline, deps.policy.min_windows)
    if not judged.features and judged.score is None:
        return Outcome("ignored", f"{thing}: period {_iso(row.period_start)} has fewer than "
                                  f"{deps.policy.min_windows} windows in the operating regime")
    return _record(row, features, score, judged, baseline, deps)


def _record(row: StatsRow, features: Mapping[str, Summary], score: Summary | None, judged: Distances,
            baseline: Baseline, deps: DriftDeps) -> Outcome:
    policy, thing, key = deps.policy, row.thing_name, period_key(row.period_start)
    verdict = Verdict({}, {}, {}, {})
    for _ in range(MAX_ATTEMPTS):
        item = deps.state.get(DRIFT, thing)
        before = load(DriftState, item) or DriftState(thing)
        if before.model_version != row.model_version:
            if _stale(key, row.model_version, before):
                return Outcome("ignored", f"{thing}: stale stats of v{row.model_version} (now v{before.model_version})")
            # a new version: the score is another model's, and a drift still on is timed from this version's first
            # period (the retraining it may ask for is this version's, on data captured since)
            since = row.period_start if before.status == "drifting" else before.since
            before = replace(before, model_version=row.model_version, periods={}, reference_starts=(), reference={},
                             score_reference=(), since=since)
        if key in before.periods:  # a redelivery: finish what a crash may have left undone
            sent = _settle(before, Verdict({}, {}, {}, {}), row, deps)
            if before.status == "drifting":
                sent += _retrain_if_due(before, row, deps)
            return Outcome("duplicate", f"{thing}: period {_iso(row.period_start)} already judged", sent=tuple(sent))
        verdict = _judge(before, features, score, judged, baseline, policy)
        after = _status(_remember(before, key, features, score, verdict.drifting, policy), policy)
        written = (deps.state.put(DRIFT, thing, replace(after, rev=1).to_item(), if_absent=True) if item is None else
                   deps.state.update_if(DRIFT, thing, replace(after, rev=before.rev + 1).to_item(),
                                        {"rev": before.rev if "rev" in item else None}))
        if written:
            break
    else:
        raise ConfigurationError(f"{DRIFT}/{thing}: too much contention after {MAX_ATTEMPTS} attempts")
    sent = _settle(after, verdict, row, deps)
    if after.status == "drifting":
        sent += _retrain_if_due(after, row, deps)
    action = "drifting" if verdict.drifting else "calm"
    logger.info("stats judged", thing_name=thing, period=row.period_start, drifting=verdict.drifting,
                status=after.status, far=verdict.far, changed=verdict.changed)
    return Outcome(action, f"{thing} period {_iso(row.period_start)}: {_describe(verdict)}; status {after.status}",
                   {"distances": verdict.distances, "changes": verdict.changes, "ratio": verdict.ratio}, tuple(sent))


def _stale(key: str, version: int | None, state: DriftState) -> bool:
    """Stats of another version than the state's are stale when the state holds a later period, or the same period
    of a newer version: a model swap splits its period into two rows, which may arrive in either order."""
    if state.model_version is None:
        return False
    newest = max(state.periods, default="")
    return key < newest or (key == newest and (version or 0) < state.model_version)


# -- judging -----------------------------------------------------------------------------------------
def _judge(state: DriftState, features: Mapping[str, Summary], score: Summary | None, judged: Distances,
           baseline: Baseline, policy: DriftPolicy) -> Verdict:
    """Far from training, changed from the turbine's reference: every judged series against its threshold."""
    dist = {n: round(d, 4) for n, d in judged.features.items()}
    limits = {n: max(policy.min_distance, policy.fleet_factor * baseline.tolerance.get(n, 0.0)) for n in dist}
    if judged.score is not None:
        dist[SCORE] = round(judged.score, 4)
        limits[SCORE] = max(policy.min_distance, policy.score_min_distance,
                            policy.fleet_factor * baseline.score_tolerance)
    changes: dict[str, float] = {}
    if len(state.reference_starts) >= policy.reference_periods:
        n = len(state.reference_starts)
        for name in judged.features:
            if name in state.reference:
                changes[name] = _change(features[name], state.reference[name], n, baseline.features[name])
        if judged.score is not None and score is not None and state.score_reference:
            changes[SCORE] = _change(score, state.score_reference, n, baseline.score)
    ratio = max([d / limits[n] for n, d in dist.items()] + [c / policy.change_threshold for c in changes.values()],
                default=0.0)
    return Verdict(dist, changes, {n: d for n, d in dist.items() if d >= limits[n]},
                   {n: c for n, c in changes.items() if c >= policy.change_threshold}, round(ratio, 4))


def _change(current: Summary, reference_sum: tuple[float, ...], periods: int, base: Summary) -> float:
    """W1 between the period and the turbine's reference (the mean of its first periods' sketches), in training
    standard deviations."""
    reference = (np.asarray(reference_sum) / periods).tolist()
    return round(sketch_distance(current.quantiles, reference, scale(base)), 4)


def _remember(state: DriftState, key: str, features: Mapping[str, Summary], score: Summary | None, drifting: bool,
              policy: DriftPolicy) -> DriftState:
    """The period's verdict into the history (the latest HISTORY periods), and its sketches into the reference
    while the reference is not complete."""
    periods = dict(sorted({**state.periods, key: drifting}.items())[-HISTORY:])
    if len(state.reference_starts) >= policy.reference_periods or key not in periods:
        return replace(state, periods=periods)
    reference = {n: tuple(a + b for a, b in zip(state.reference.get(n, (0.0,) * len(LEVELS)), s.quantiles,
                                                strict=True)) for n, s in features.items()}
    score_reference = state.score_reference
    if score is not None:
        score_reference = tuple(a + b for a, b in zip(state.score_reference or (0.0,) * len(LEVELS), score.quantiles,
                                                      strict=True))
    return replace(state, periods=periods, reference_starts=(*state.reference_starts, key), reference=reference,
                   score_reference=score_reference)


def _status(state: DriftState, policy: DriftPolicy) -> DriftState:
    """ok -> drifting when the latest alert_periods periods all drift, drifting -> ok when they are all calm."""
    latest = [drifting for _, drifting in sorted(state.periods.items())][-policy.alert_periods:]
    if len(latest) < policy.alert_periods:
        return state
    if state.status != "drifting" and all(latest):
        keys = sorted(state.periods)[-policy.alert_periods:]
        since = float(keys[0])
        alert_id = f"drift:{state.thing_name}:{state.model_version}:{int(since)}"
        return replace(state, status="drifting", since=since, alert_id=alert_id)
    if state.status == "drifting" and not any(latest):
        return replace(state, status="ok")
    return state


# -- alerts ----------------------------------------------------------------------------------------
def _settle(state: DriftState, verdict: Verdict, row: StatsRow, deps: DriftDeps) -> list[str]:
    """Bring the turbine's drift alert (and its entry in the drifting index) in line with its state: open, update
    and send it while drifting; close it and send its resolution once calm, then forget it. Idempotent: a
    redelivery (or the turbine's next row) finishes what a crash left undone, a claim a dead function never sent
    included."""
    alert_id = state.alert_id
    if alert_id is None:
        return []
    if state.status == "drifting":
        _keep_open(state, verdict, row, deps)
    else:
        _close(state, row, deps)
    current, sent = _current(alert_id, deps), []
    if current is not None and current.alert is None and _claim(deps.alerts, alert_id, "alert"):
        sent.append(_send(deps.alerts, alert_id, "alert", partial(_drift_message, current, row, deps)))
        current = _current(alert_id, deps)
    if state.status == "drifting":
        return sent
    if current is not None and current.alert == "sent" and current.resolution is None \
            and _claim(deps.alerts, alert_id, "resolution"):
        sent.append(_send(deps.alerts, alert_id, "resolution", partial(_resolution_message, current, row)))
        current = _current(alert_id, deps)
    if current is None or (current.alert == "sent" and current.resolution == "sent"):  # settled: forget it
        deps.state.update_if(DRIFT, state.thing_name, {"alert_id": None}, {"alert_id": alert_id, "status": "ok"})
    return sent


def _keep_open(state: DriftState, verdict: Verdict, row: StatsRow, deps: DriftDeps) -> None:
    """The turbine in the drifting index (with its latest judged period: a silent turbine stops counting), its
    alert item, and the latest drifting period's figures on it."""
    alert_id, now = str(state.alert_id), deps.clock().timestamp()
    deps.state.put(DRIFTING, state.thing_name, {"since": state.since, "model_version": state.model_version,
                                                "alert_id": alert_id, "last_period": _last_period(state, row)})
    alert = DriftAlert(alert_id=alert_id, turbine_id=state.thing_name, first_seen_at=now,
                       expires_at=int(now + deps.policy.retention_s), model_version=state.model_version,
                       since=state.since or row.period_start)
    deps.alerts.alerts.put(ALERTS, alert_id, alert.to_item(), if_absent=True)
    if verdict.drifting:  # the latest drifting period's figures
        deps.alerts.alerts.update_if(ALERTS, alert_id, DriftAlert.changes(
            features=verdict.features(), last_period=row.period_start,
            distances={n: d for n, d in verdict.distances.items() if n != SCORE},
            turbine_changes={n: c for n, c in verdict.changes.items() if n != SCORE},
            score_distance=verdict.distances.get(SCORE), score_change=verdict.changes.get(SCORE)),
            {"status": "open"})


def _close(state: DriftState, row: StatsRow, deps: DriftDeps) -> None:
    deps.state.delete(DRIFTING, state.thing_name)
    deps.alerts.alerts.update_if(ALERTS, str(state.alert_id),
                                 DriftAlert.changes(status="closed", ended_at=row.period_start), {"status": "open"})


def _last_period(state: DriftState, row: StatsRow) -> float:
    return float(max(state.periods)) if state.periods else row.period_start


def _current(alert_id: str, deps: DriftDeps) -> DriftAlert | None:
    """The alert item, its notifications claimed by a function that died before sending them (STALE_CLAIM_S ago)
    given back so that they are sent."""
    current = load(DriftAlert, deps.alerts.alerts.get(ALERTS, alert_id))
    if current is not None and _release_stale_claims(current, deps.clock().timestamp(), deps.alerts):
        return load(DriftAlert, deps.alerts.alerts.get(ALERTS, alert_id))
    return current


def _describe(verdict: Verdict) -> str:
    if not verdict.drifting:
        return "calm"
    parts = [f"{n} {d:.2f} from training" for n, d in sorted(verdict.far.items())]
    parts += [f"{n} changed {c:.2f}" for n, c in sorted(verdict.changed.items())]
    return "drifting: " + ", ".join(parts)


def _drift_message(alert: DriftAlert, row: StatsRow, deps: DriftDeps) -> tuple[str, str, dict[str, str]]:
    """The alert's text from its item (the latest drifting period's figures)."""
    thing = alert.turbine_id
    distances = {**alert.distances, **({SCORE: alert.score_distance} if alert.score_distance is not None else {})}
    changes = {**alert.turbine_changes, **({SCORE: alert.score_change} if alert.score_change is not None else {})}
    worst = {n: max(distances.get(n, 0.0), changes.get(n, 0.0)) for n in {*distances, *changes}}
    named = sorted(worst, key=lambda n: -worst[n])[:NAMED]
    lines = [f"Turbine {thing}: its data no longer looks like it did (model v{alert.model_version}) since the period "
             f"starting {_iso(alert.since)} ({deps.policy.alert_periods} consecutive drifting periods).", "",
             "Distances in training standard deviations (Wasserstein-1 of the central 90 %), from the training data"
             " and from this turbine's first periods:",
             *(f"  {n}: {distances[n]:.2f}" + (f", {changes[n]:.2f}" if n in changes else "")
               + ("  <- drifting" if n in alert.features or n == SCORE else "") for n in sorted(distances)),
             "", _latest(alert, row),
             f"Retraining starts by itself when at least {deps.policy.retrain_turbines} turbines drift for "
             f"{deps.policy.retrain_after_s / 3600:g} h with {deps.policy.retrain_min_captured_hours:g} h of captured "
             "normal data; approving the new version stays yours.",
             "", f"Acknowledge: nacelle alerts ack {alert.alert_id}"]
    top = ", ".join(f"{n} ({worst[n]:.1f} sd)" for n in named)
    return (f"[MEDIUM] {thing}: data drift in {top}", "\n".join(lines),
            _attributes(thing, "medium", alert.features, "drift"))


def _latest(alert: DriftAlert, row: StatsRow) -> str:
    if alert.status == "closed":  # sent late (its first send never finished): the drift is already over
        return f"The drift ended with the period starting {_iso(alert.ended_at)}."
    return (f"Latest period: {_iso(row.period_start)} + {row.period_s / 60:g} min, {row.operating_windows} of "
            f"{row.windows} windows in the operating regime.")


def _resolution_message(alert: DriftAlert, row: StatsRow) -> tuple[str, str, dict[str, str]]:
    thing = alert.turbine_id
    body = (f"Turbine {thing}: its data looks like model v{alert.model_version}'s training data again since the "
            f"period starting {_iso(row.period_start)} (drifting since {_iso(alert.since)}).\n\n"
            f"Alert: {alert.alert_id}")
    return f"[RESOLVED] {thing}: data drift", body, _attributes(thing, "medium", alert.features, "drift-resolved")


# -- retraining ---------------------------------------------------------------------------------------
def _retrain_if_due(state: DriftState, row: StatsRow, deps: DriftDeps) -> list[str]:
    policy, now = deps.policy, _retrain_clock(row)
    if state.since is None or now - state.since < policy.retrain_after_s:
        return []
    pk, key = sk.group_pk(deps.group), f"{RETRAIN}{state.model_version}"
    marker = deps.state.get(pk, key) or {}
    if marker.get("status") == "requested":
        return _notify_retraining(marker, pk, key, deps)  # asked already: its notice until one was sent
    # checked this period (a check dated after `now` is not trusted to be one)
    if 0 <= now - float(marker.get("checked_at") or -math.inf) < row.period_s:
        return []
    if not deps.state.update_if(pk, key, {"checked_at": now}, {"checked_at": marker.get("checked_at")}):
        return []  # another delivery checks it
    since = {str(e["sk"]): float(e.get("since") or now) for e in deps.state.query(DRIFTING)
             if e.get("model_version") == state.model_version and _recent(e, now)}
    long = sorted(t for t, start in since.items() if now - start >= policy.retrain_after_s)
    learned = _trained_on_their_drift(deps, state.model_version, now)
    if learned & set(long):
        logger.info("drift the version was trained on does not ask for another retraining",
                    model_version=state.model_version, turbines=sorted(learned & set(long)))
        long = [t for t in long if t not in learned]
    if len(long) < policy.retrain_turbines:
        return []
    hours = captured_normal_hours(deps, {t: since[t] for t in long}, policy.retrain_min_captured_hours)
    if hours < policy.retrain_min_captured_hours:
        logger.info("drift retraining waits for captured data", turbines=long, captured_hours=round(hours, 2))
        return []
    reason = (f"drift on {', '.join(long)} for at least {policy.retrain_after_s / 3600:g} h "
              f"(model v{state.model_version}), {hours:.1f} h of normal data captured on them since")
    requested = deps.clock().isoformat()
    # the check first: a redelivery may ask twice (a check is idempotent), a crash never leaves it unasked
    deps.events.publish(Envelope(NACELLE_SOURCE, RETRAIN_CHECK, {"group": deps.group, "requested_at": requested,
                                                                "reason": reason}))
    request = {"status": "requested", "turbines": long, "captured_hours": round(hours, 3), "requested_at": requested,
               "reason": reason}
    if not deps.state.update_if(pk, key, request, {"status": None}):
        return []
    logger.warning("drift retraining requested", turbines=long, captured_hours=round(hours, 2))
    return _notify_retraining({**marker, **request}, pk, key, deps)


def _retrain_clock(row: StatsRow) -> float:
    """The row's time for the retraining policy: the end of its period (sample time; intake refused periods ending
    more than MAX_CLOCK_AHEAD_S after the broker received them)."""
    return row.period_start + row.period_s


def _recent(entry: Mapping[str, Any], now: float) -> bool:
    """A drifting turbine still reporting: one that stopped (decommissioned, detector off, on a version without a
    baseline) leaves an entry that nothing closes; it no longer counts."""
    last = entry.get("last_period")
    return isinstance(last, int | float) and now - float(last) <= RECENT_S


def _notify_retraining(request: Mapping[str, Any], pk: str, key: str, deps: DriftDeps) -> list[str]:
    """The operators' notice of a retraining request, at least once: claimed, published, then marked sent; a
    failed publish gives the claim back, and a claim a dead function left is taken again after STALE_CLAIM_S."""
    if request.get("notified_at") is not None or "reason" not in request:  # sent (or asked before notices were marked)
        return []
    clock, claimed = deps.clock().timestamp(), request.get("notice_claimed_at")
    if isinstance(claimed, int | float) and clock - claimed < STALE_CLAIM_S:
        return []  # another delivery is sending it
    if not deps.state.update_if(pk, key, {"notice_claimed_at": clock}, {"notice_claimed_at": claimed,
                                                                         "notified_at": None}):
        return []
    turbines = [str(t) for t in request.get("turbines") or ()]
    body = (f"{request['reason']}.\n\nThe retraining policy trains on every accepted file (the history and the "
            "captured data); the new version waits for approval as usual.")
    try:
        message_id = deps.alerts.notifier.publish(
            "alerts", f"[MEDIUM] drift on {len(turbines)} turbines: retraining requested", body,
            _attributes(turbines[0] if turbines else "", "medium", [], "drift-retrain"))
    except Exception:
        deps.state.update_if(pk, key, {"notice_claimed_at": None}, {"notice_claimed_at": clock})
        raise
    deps.state.update_if(pk, key, {"notified_at": clock, "notice_message_id": message_id}, {"notified_at": None})
    return [f"retrain:{key.removeprefix(RETRAIN)}:{message_id}"]


def _trained_on_their_drift(deps: DriftDeps, version: int | None, now: float) -> set[str]:
    """The turbines whose drift an earlier drift retraining handed to the job that trained `version`: their
    captured data since the drift is in its training data, so asking again would train on the same drift (their
    alert stays open: they still differ from the rest of the training data)."""
    job = None if version is None else deps.baselines.job(version, deps.store, deps.group, now)
    if job is None:
        return set()
    return {str(t) for request in deps.state.query(sk.group_pk(deps.group), RETRAIN)
            if request.get("job_name") == job for t in request.get("turbines") or ()}


def captured_normal_hours(deps: DriftDeps, since: Mapping[str, float], enough: float) -> float:
    """Hours of accepted normal-operation captures (raw/capture/<thing>/, shared.capture names) of each turbine
    starting at or after its `since`: the span of each file's validated rows (its record), never the span its name
    claims, and time covered by several files once; counting stops at `enough`."""
    total, pk = 0.0, sk.group_pk(deps.group)
    for thing, start in sorted(since.items()):
        spans = []
        for obj in deps.store.list(f"{CAPTURE_PREFIX}{thing}/"):
            name = CaptureName.parse(obj.key.rsplit("/", 1)[-1])
            if name is None or name.kind != NORMAL or name.start < start:
                continue
            record = deps.state.get(pk, sk.FILE + obj.key) or {}
            span = _rows_span(record) if record.get("status") == "accepted" else None
            if span is not None:
                spans.append(span)
        total += _covered_s(spans) / 3600
        if total >= enough:
            return total
    return total


def _rows_span(record: Mapping[str, Any]) -> tuple[float, float] | None:
    """(first, last) sample time of an accepted file's rows, from its record (None: unknown)."""
    try:
        first, last = (datetime.fromisoformat(str(record[k])).timestamp() for k in ("start", "end"))
    except (KeyError, ValueError):
        return None
    return (first, last) if last >= first else None


def _covered_s(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of the spans."""
    covered, reach = 0.0, -math.inf
    for first, last in sorted(spans):
        if last > reach:
            covered += last - max(first, reach)
            reach = last
    return covered
