"""Labels meet data: an operator's verdict on an episode labels the files the turbine's detector captured around it.

An acknowledgement with a verdict writes `labels/alerts/<alert>/labels.json` (alerts.acknowledge); the detector
uploads `raw/capture/<thing>/<file>` (shared/capture.py names them, with the episode id). Whichever of the two
data_arrival accepts second, it writes `labels/capture/<thing>/<file without .csv>/labels.json` over the captured
file's whole span:

* verdict `fault`: one labelled episode (the alert label's fault name and severity): training keeps every window
  of the file out of its normal data, and its evaluation counts the fault;
* verdict `false-alarm`: a `false_alarms` span: normal operation, trained on as such, and a hard example the
  quality gate reports on (training_jobs/field_data.py).

A changed verdict rewrites the label; the same verdict again writes nothing. A captured episode file that no
verdict covers is left out of training (nobody said whether it is normal); captured normal files need no label.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.capture import CAPTURE_PREFIX, EPISODE, CaptureName, capture_label_key, parse_capture_key
from shared.errors import DataError, ObjectNotFound
from shared.ml.metrics import parse_false_alarms, parse_labels
from shared.ml.validation import Problem, ValidationReport
from shared.observability import logger
from shared.ports import ObjectStore, StateStore
from shared.usecases import state_keys as sk
from shared.usecases.alerts import LABELS_PREFIX as ALERT_LABELS_PREFIX
from shared.usecases.alerts import label_key as alert_label_key

VERDICTS = ("fault", "false-alarm")
SPAN_SLACK_S = 0.002  # a name's times are milliseconds rounded outwards (shared.capture.stamp)
MIN_SPAN_COVERED = 0.9  # of a name's span its rows cover at least (the detector names a file by its rows)


def capture_problems(key: str, report: ValidationReport, time_column: str) -> list[Problem]:
    """Why a file under raw/capture/<thing>/ cannot be that thing's captured data (none: it can). A device writes
    only its own prefix (the role alias's policy, the local gateway), but could still name another turbine in the
    file's rows: those rows would then train and judge another turbine's model. Nor may the name claim another span
    than the rows': drift retraining counts captured hours, and a verdict labels the named span."""
    parsed = parse_capture_key(key)
    if parsed is None:
        return [] if not key.startswith(CAPTURE_PREFIX) else [Problem("foreign_capture", (
            f"{key}: not a captured file's name (raw/capture/<thing>/<start>_<end>_<kind>_m<version>..._p<n>.csv)"))]
    problems = []
    foreign = sorted(set(report.turbines) - {parsed[0]})
    if foreign:
        problems.append(Problem("foreign_capture",
                                f"{key}: captured under {parsed[0]} but holds rows of turbine(s) {', '.join(foreign)}"))
    span = _span_problem(key, parsed[1], report)
    if span is not None:
        problems.append(Problem("capture_span", span, column=time_column))
    return problems


def _span_problem(key: str, name: CaptureName, report: ValidationReport) -> str | None:
    """The rows' first and last times against the span the file's name gives (its <start>_<end>, in ms rounded
    outwards): inside it, and covering at least MIN_SPAN_COVERED of it."""
    if report.start is None or report.end is None:
        return None  # no valid row: reported as such
    try:
        first, last = datetime.fromisoformat(report.start).timestamp(), datetime.fromisoformat(report.end).timestamp()
    except ValueError:
        return None  # a time out of range: reported as such
    claimed = f"the name's span {_iso(name.start)} to {_iso(name.end)} (its <start>_<end>)"
    if first < name.start - SPAN_SLACK_S or last > name.end + SPAN_SLACK_S:
        return f"{key}: rows from {report.start} to {report.end} fall outside {claimed}"
    if (last - first) < MIN_SPAN_COVERED * (name.end - name.start) - SPAN_SLACK_S:
        return (f"{key}: rows from {report.start} to {report.end} cover {last - first:.3f} s of {claimed}, "
                f"{name.end - name.start:.3f} s (at least {MIN_SPAN_COVERED:.0%} needed)")
    return None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def link_captures(key: str, store: ObjectStore, state: StateStore, group: str) -> list[str]:
    """After data_arrival accepted `key`: the capture labels it completes (written when new or changed)."""
    if key.startswith(ALERT_LABELS_PREFIX):
        return _from_alert_label(key, store, state, group)
    parsed = parse_capture_key(key)
    if parsed is not None and parsed[1].kind == EPISODE and _accepted(state, group, key):
        thing, name = parsed
        label = alert_label_key(f"episode:{thing}:{name.episode_id}")
        if _accepted(state, group, label):  # else: linked when its own arrival is handled
            verdict = _verdict(label, store)
            if verdict is not None:
                return [_write(key, thing, name, label, verdict, store)]
    return []


def _accepted(state: StateStore, group: str, key: str) -> bool:
    record = state.get(sk.group_pk(group), sk.FILE + key)
    return record is not None and record.get("status") == "accepted"


def _verdict(label: str, store: ObjectStore) -> dict[str, Any] | None:
    """The alert label's verdict, fault name, severity and author; None when it names no episode verdict."""
    try:
        text = store.get(label).decode("utf-8")
        faults, normal = parse_labels(text, label), parse_false_alarms(text, label)
        source = json.loads(text).get("source") or {}
    except (ObjectNotFound, DataError, UnicodeDecodeError, AttributeError) as exc:
        logger.warning("alert label unreadable: captured data stays unlabelled", key=label, reason=str(exc))
        return None
    if not isinstance(source, dict):
        return None
    verdict = source.get("verdict")
    thing = _turbine_of(label, source)
    if verdict not in VERDICTS or thing is None:
        return None
    fault = faults[0] if faults else None
    spans = [*faults, *normal]
    return {"verdict": verdict, "episode_id": str(source["episode_id"]), "by": source.get("by"),
            "fault": fault.fault if fault else None, "severity": fault.severity if fault else None, "thing": thing,
            "days": _days(min((f.start for f in spans), default=0.0), max((f.end for f in spans), default=0.0))}


def _turbine_of(label: str, source: dict[str, Any]) -> str | None:
    """The turbine whose alert the label is (`episode:<thing>:<episode id>`, the thing its topic named), when the
    label is that alert's: its captures only are labelled, whatever the episode id (chosen by a device) says."""
    alert_id, episode = str(source.get("alert_id") or ""), str(source.get("episode_id") or "")
    kind, _, rest = alert_id.partition(":")
    thing, _, named = rest.partition(":")
    if kind != "episode" or not thing or not episode or named != episode or alert_label_key(alert_id) != label:
        return None
    return thing


def _days(start: float, end: float) -> list[str]:
    """The UTC days (`YYYYmmdd`, how captured file names begin) the episode's captures can start on: from a day
    before its start (the before-context) to its end (a long episode is captured in parts)."""
    first = datetime.fromtimestamp(start, UTC).date() - timedelta(days=1)
    last = datetime.fromtimestamp(max(start, end), UTC).date()
    return [(first + timedelta(days=k)).strftime("%Y%m%d") for k in range((last - first).days + 1)]


def _from_alert_label(label: str, store: ObjectStore, state: StateStore, group: str) -> list[str]:
    if not _accepted(state, group, label):
        return []
    verdict = _verdict(label, store)
    if verdict is None:
        return []
    written, thing = [], verdict["thing"]
    for day in verdict["days"]:  # listing a day's captures, not the turbine's whole history
        for obj in store.list(f"{CAPTURE_PREFIX}{thing}/{day}"):
            parsed = parse_capture_key(obj.key)
            if (parsed is not None and parsed[1].episode_id == verdict["episode_id"]
                    and _accepted(state, group, obj.key)):
                written.append(_write(obj.key, parsed[0], parsed[1], label, verdict, store))
    return written


def _write(capture: str, thing: str, name: CaptureName, label: str, verdict: dict[str, Any],
           store: ObjectStore) -> str:
    span = {"turbine_id": thing, "start": name.start, "end": name.end}
    fault = verdict["verdict"] == "fault"
    doc = {"episodes": [{**span, "fault": verdict["fault"] or "operator-confirmed",
                         "severity": verdict["severity"] or "unknown"}] if fault else [],
           "false_alarms": [] if fault else [span],
           "source": {"capture_key": capture, "alert_label_key": label, "episode_id": verdict["episode_id"],
                      "verdict": verdict["verdict"], "by": verdict["by"], "model_version": name.model_version}}
    data = json.dumps(doc, indent=1, sort_keys=True).encode()
    target = capture_label_key(capture)
    try:
        unchanged = store.get(target) == data
    except ObjectNotFound:
        unchanged = False
    if not unchanged:
        store.put(target, data, "application/json")
        logger.info("captured data labelled", key=capture, label=target, verdict=verdict["verdict"])
    return target
