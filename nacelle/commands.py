"""Subcommands that work on the local stack's data directory, whether or not `nacelle up` runs.

Only the commands that start a stack or put something in it (`up`, `data put`, `spec put`) create the data
directory; every other one refuses a path that holds no stack instead of creating an empty one. Human output
keeps to 100 columns with times in ISO 8601 UTC; `--json` carries the details, with numbers as numbers and
every time as an ISO 8601 UTC string.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nacelle.console import age, iso, json_ready, parse_version, print_json, table
from shared.errors import Conflict, NacelleError

STACK_FILES = ("config.yaml", "bus.db", "state.db", "registry.db")  # what makes a directory a stack's


def data_dir(args: argparse.Namespace, create: bool = False) -> Path:
    """The data directory of --data-dir / $NACELLE_HOME / ./.nacelle; unless `create`, it must hold a stack."""
    from nacelle.local.runtime.stack import home_from

    home = home_from(args.data_dir)
    if home.exists() and not home.is_dir():
        raise NacelleError(f"no Nacelle data directory at {home}: it is a file")
    if not create and not (home.is_dir() and any((home / name).exists() for name in STACK_FILES)):
        raise NacelleError(f"no Nacelle data directory at {home} (start one with `nacelle up`)")
    return home


def _stack(args: argparse.Namespace, create: bool = False) -> Any:
    from nacelle.local.runtime.stack import Stack

    return Stack(data_dir(args, create))


# -- up ------------------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    from nacelle.local.runtime.up import free_console_port, run_up

    port = args.console_port if args.console_port is not None else free_console_port()
    return run_up(data_dir(args, create=True), devices=args.devices, canary_size=args.canary_size,
                  console_port=port, source=args.source, full_devices=args.full_devices)


def cmd_console(args: argparse.Namespace) -> int:
    """Print (and with --open, open) the URL of the console the running stack serves."""
    from nacelle.local.runtime.console_server import console_url

    url = console_url(data_dir(args))
    print(url)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    return 0


# -- data put ------------------------------------------------------------------------------------
@dataclass
class UploadPlan:
    files: list[tuple[Path, str]] = field(default_factory=list)  # (file, key)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (printable path, reason)


def upload_keys(paths: list[Path]) -> UploadPlan:
    """(file, key): raw/<path relative to the argument's parent>; labels.json files go to labels/.
    Entries that cannot become objects (symbolic links, names that are not valid UTF-8 or hold a
    backslash, a control character or a '..' segment) are refused one by one; links are never followed."""
    from nacelle.local.adapters.objectstore import key_problem

    plan = UploadPlan()
    for arg in paths:
        if not arg.exists():
            raise NacelleError(f"{arg}: no such file or directory")
        root = arg.resolve()
        base = root.parent
        if root.is_dir():
            entries: list[Path] = []
            for directory, dirnames, filenames in os.walk(root):  # does not follow directory links
                dirnames.sort()
                for name in sorted(dirnames):
                    if Path(directory, name).is_symlink():
                        plan.refused.append((repr(str(Path(directory, name))), "a symbolic link (not followed)"))
                entries += [Path(directory, name) for name in sorted(filenames)]
        else:
            entries = [root]
        for f in entries:
            rel = f.relative_to(base).as_posix()
            key = f"labels/{rel}" if f.name == "labels.json" else f"raw/{rel}"
            problem = ("a symbolic link (not followed)" if f.is_symlink()
                       else None if f.is_file() else "not a regular file")
            if problem is None and (name_problem := key_problem(key)):
                problem = f"the name {name_problem}"
            if problem:
                plan.refused.append((repr(str(f)), problem))
            else:
                plan.files.append((f, key))
    return plan


def cmd_data_put(args: argparse.Namespace) -> int:
    stack = _stack(args, create=True)
    for prefix in ("raw/", "labels/"):  # what a killed put left half-written
        stack.store.inner.sweep_temp_files(prefix)
    plan = upload_keys([Path(p) for p in args.paths])
    uploaded = skipped = announced = 0
    for path, key in plan.files:
        data = path.read_bytes()
        if stack.store.put_if_absent(key, data):
            uploaded += 1
            print(f"uploaded {key}")
        elif stack.store.get(key) == data:
            skipped += 1
            if stack.store.announce_if_unannounced(key):  # stored by a put killed before its event
                announced += 1
                print(f"announced {key} (stored earlier, its event had not gone out)")
        else:
            raise Conflict(f"{key} already exists with different content; raw data is immutable "
                           f"(upload it under another name)")
    for name, reason in plan.refused:
        print(f"refused {name}: {reason}", file=sys.stderr)
    print(f"{uploaded} uploaded, {skipped} already present (identical; {announced} of them announced now), "
          f"{len(plan.refused)} refused")
    if (readings := turbines_read(plan.files, stack)) is not None:
        print(f"the stack reads each file's turbine from its folder: {readings}")
    return 1 if plan.refused else 0


def turbines_read(files: list[tuple[Path, str]], stack: Any) -> str | None:
    """What the stack will read as the turbines of the put data files (None: the spec names a turbine column).
    Files lying directly in the folder given are read as that folder's turbine, not as their names say."""
    from shared.ml.validation import turbine_from_name
    from shared.usecases.retraining import load_group_spec

    deps = stack.arrival_deps()
    if load_group_spec(deps.store, deps.policy.group)[0].turbine_id_column:
        return None
    counts: dict[str, int] = {}
    for _, key in files:
        if key.startswith("raw/"):
            parts = key.split("/")
            turbine = parts[-2] if len(parts) > 2 else turbine_from_name(key)
            counts[turbine] = counts.get(turbine, 0) + 1
    return ", ".join(f"{t} ({n} file{'s' if n > 1 else ''})" for t, n in sorted(counts.items())) or None


def cmd_data_retire(args: argparse.Namespace) -> int:
    from shared.usecases.retraining import retire_file

    stack = _stack(args)
    record = retire_file(stack.arrival_deps(), args.key, args.by or getpass.getuser(), args.reason)
    print(f"retired {args.key} (was {record['status_before_retirement']}) by {record['retired_by']} at "
          f"{iso(record['retired_at'])}: {record['retired_reason']}; future datasets leave it out")
    return 0


def cmd_data_status(args: argparse.Namespace) -> int:
    """What the retraining policy (shared.usecases.retraining) sees now: new data against its threshold, the
    quiet period left, a running job, and what a check would decide."""
    from shared.usecases.retraining import retrain_status

    status = retrain_status(_stack(args).arrival_deps())
    if args.json:
        print_json({**asdict(status), "would_start": status.blocker is None})
        return 0
    quiet = (f"{status.quiet_left_s:.0f} s of the {status.quiet_period_s:g} s quiet period left"
             if status.quiet_left_s > 0 else f"quiet period of {status.quiet_period_s:g} s over")
    rows = [
        ("new data", f"{status.new_turbine_hours:.2f} of the {status.min_new_turbine_hours:g} turbine-hours that "
                     f"start a training, in {status.new_files} file(s) not trained on yet"),
        ("accepted", f"{status.accepted_files} data file(s), {status.rows} rows (a training needs "
                     f"{status.min_rows})"),
        ("last arrival", f"{iso(status.last_arrival_at) or 'none yet'}" + (f"; {quiet}" if status.last_arrival_at
                                                                            else "")),
        ("running job", status.active_job or "none"),
        ("trained until", iso(status.trained_until) or "nothing trained on yet"),
        ("retraining", "a check now would start a training job" if status.blocker is None
         else f"waits: {status.blocker}"),
    ]
    for name, value in rows:
        print(f"{name:14s} {value}")
    return 0


# -- spec put ------------------------------------------------------------------------------------
def cmd_spec_put(args: argparse.Namespace) -> int:
    from nacelle.spec_tools import SpecFile, install_spec

    spec_file = SpecFile.read(Path(args.file))  # refused before the stack is touched
    stack = _stack(args, create=True)
    installed = install_spec(stack.store, args.group or stack.settings.group, spec_file)
    spec = spec_file.spec
    state = "already installed (identical)" if installed.unchanged else "installed"
    print(f"{state} {installed.key}: spec {spec.name!r} version {spec.version}, digest {spec.digest()} "
          f"(file sha256 {spec_file.sha256})")
    for key in installed.replaced:
        print(f"removed {key}")
    return 0




# -- models --------------------------------------------------------------------------------------
def _roles(stack: Any) -> dict[str, str]:
    """Thing group -> its part in a rollout."""
    from shared.usecases.operator_models import roles

    return roles(stack.rollout_deps())


def _version_doc(v: Any, champion: int | None, deployed: Mapping[int, list[str]],
                 history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    from shared.usecases.operator_models import version_doc

    return version_doc(v, champion, deployed, history)


def _registry_view(stack: Any) -> tuple[int | None, dict[int, list[str]]]:
    from shared.usecases.operator_models import registry_view

    return registry_view(stack.rollout_deps())


def _status_text(doc: Mapping[str, Any]) -> str:
    canary_only = doc["status"] == "Approved" and doc["metadata"].get("nacelle:approval_scope") == "canary"
    extra = [word for word, on in (("champion", doc["champion"]), ("failed", doc["failed"]),
                                   ("canary only", canary_only)) if on]
    return doc["status"] + (f" ({', '.join(extra)})" if extra else "")


def cmd_models_list(args: argparse.Namespace) -> int:
    stack = _stack(args)
    champion, deployed = _registry_view(stack)
    docs = [_version_doc(v, champion, deployed) for v in stack.registry.list(stack.settings.group)]
    if args.json:
        print_json(docs)
        return 0
    if not docs:
        print("no model versions yet: data in raw/ starts a training (see `nacelle data status`)")
        return 0
    print(table(["version", "status", "deployed", "event F1", "FA/day", "created"],
                [[f"v{d['version']}", _status_text(d), "+".join(d["deployed"]) or "-", d["metrics"].get("event_f1"),
                  d["metrics"].get("false_alarms_per_turbine_day"), iso(d["created_at"])] for d in docs]))
    print(f"champion: {f'v{champion}' if champion else 'none'} (the newest approved version not marked failed nor "
          "approved for the canary only)")
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    stack = _stack(args)
    group = stack.settings.group
    v = stack.registry.get(group, args.version)
    champion, deployed = _registry_view(stack)
    doc = _version_doc(v, champion, deployed, stack.registry.history(group, args.version))
    if args.json:
        print_json(doc)
        return 0
    rows = [("version", f"v{v.version} of {group}"), ("status", _status_text(doc)),
            ("deployed", " and ".join(doc["deployed"]) or "nowhere"), ("created", iso(v.created_at)),
            ("job", doc["job"] or "-"), ("model", v.model_data_key), ("arn", v.arn or "-"),
            ("description", v.description or "-")]
    for name, value in rows:
        print(f"{name:12s} {value}")
    for title, figures in (("metrics (held-out data)", doc["metrics"]),
                           ("champion's metrics on the same data", doc["champion_metrics"])):
        if figures:
            print(f"{title}:")
            for key, value in figures.items():
                print(f"  {key:34s} {'-' if value is None else f'{value:.4g}'}")
    print("lineage and gate:")
    for key, value in doc["metadata"].items():
        print(f"  {key:34s} {value}")
    print("history:")
    for h in doc["history"]:
        print(f"  {iso(h['at'])}  {h['status']:22s} by {h['actor']}: {h['reason']}")
    return 0


def cmd_models_approve(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from shared.usecases.approval import approve
    from shared.usecases.approval_scope import canary_only

    stack = _stack(args)
    widened = canary_only(stack.registry.get(stack.settings.group, args.version))
    v = approve(stack.registry, stack.settings.group, args.version, args.by or getpass.getuser(),
                args.reason or "", datetime.now(UTC), override_gate=args.override_gate)
    override = " (quality gate overridden)" if args.override_gate and v.metadata.get("nacelle:gate_override") else ""
    fleet = " for the fleet (it was approved for the canary only; the rollout promotes it after the soak)" \
        if widened else ""
    print(f"{v.group} v{v.version} is now {v.status}{override}{fleet}")
    return 0


def cmd_models_reject(args: argparse.Namespace) -> int:
    from shared.usecases.approval import reject

    stack = _stack(args)
    v = reject(stack.registry, stack.settings.group, args.version, args.by or getpass.getuser(), args.reason or "")
    print(f"{v.group} v{v.version} is now {v.status}")
    return 0


# -- jobs ----------------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(max(0.0, seconds)), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _job_progress(job: Any) -> str | None:
    """The last progress note in the job's log."""
    from nacelle.job_progress import LogFollower, Progress, job_log

    progress, last = Progress(), None
    for line in LogFollower(job_log(job)).lines(final=True):
        last = progress.note(line) or last
    return last


def cmd_jobs_list(args: argparse.Namespace) -> int:
    jobs = _stack(args).jobs.list()
    if args.json:
        print_json([j.to_dict() for j in jobs])
        return 0
    if not jobs:
        print("no jobs yet")
        return 0
    print(table(["job", "kind", "status", "created", "took"],
                [[j.name, j.kind, j.status, iso(j.created_at), _took(j)] for j in jobs]))
    for j in jobs:
        if j.failure_reason:
            print(f"{j.name}: {j.failure_reason}"[:100])
    return 0


def _took(job: Any) -> str:
    from nacelle.console import as_datetime

    start, end = as_datetime(job.created_at), as_datetime(job.ended_at)
    if start is None:
        return ""
    return _duration((end.timestamp() if end is not None else time.time()) - start.timestamp()) + \
        ("" if end is not None else " so far")


def cmd_jobs_show(args: argparse.Namespace) -> int:
    from nacelle.job_progress import job_log

    job = _stack(args).jobs.get(args.job)
    if args.json:
        print_json({**job.to_dict(), "log": job_log(job), "progress": _job_progress(job)})
        return 0
    rows = [("job", job.name), ("kind", job.kind), ("status", job.status + (f": {job.failure_reason}"
                                                                            if job.failure_reason else "")),
            ("created", iso(job.created_at)), ("ended", iso(job.ended_at) or "-"), ("took", _took(job)),
            ("progress", _job_progress(job) or "-"), ("model", job.model_key or "-"),
            ("started by", f"{job.owner or '-'} (pid {job.pid or '-'})"), ("directory", str(job.job_dir)),
            ("log", f"{job_log(job)}  (nacelle jobs logs {job.name} --follow)")]
    for name, value in rows:
        print(f"{name:12s} {value}")
    print("request:")
    for key, value in job.request.items():
        if isinstance(value, Mapping):
            value = " ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
        print(f"  {key:22s} {'-' if value in (None, '') else value}")
    return 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    from nacelle.job_progress import Progress, follow, job_log

    stack = _stack(args)
    job = stack.jobs.get(args.job)
    path = job_log(job)
    if not args.follow:
        if not path.is_file():
            raise NacelleError(f"{args.job} has no log yet (`--follow` waits for it)")
        lines: Iterable[str] = path.read_text(encoding="utf-8", errors="replace").splitlines()
    else:
        lines = follow(path, lambda: stack.jobs.get(args.job).status == "InProgress")
    progress = Progress()
    for line in lines:
        shown = progress.note(line) if args.progress else line
        if shown is not None:
            print(shown, flush=True)
    if not args.follow:
        return 0
    final = stack.jobs.get(args.job)
    print(f"job {final.name}: {final.status}" + (f" ({final.failure_reason})" if final.failure_reason else ""),
          file=sys.stderr, flush=True)
    return 0 if final.status == "Completed" else 1


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    from shared.usecases.operator_data import retry

    outcome = retry(_stack(args).operator_deps(), args.job)
    print(f"{outcome.action}: {outcome.detail}")
    return 0


# -- events --------------------------------------------------------------------------------------
def cmd_events_dlq(args: argparse.Namespace) -> int:
    dead = _stack(args).bus.dlq()
    if args.json:
        print_json([asdict(d) for d in dead])
        return 0
    if not dead:
        print("no dead letters")
        return 0
    print(table(["id", "target", "event", "attempts", "last try"],
                [[d.id, d.target, d.event_id[:8], d.attempts, iso(d.updated_at)] for d in dead]))
    print("last errors (all of it: --json):")
    for d in dead:
        print(f"  {d.id}: {d.last_error or '-'}"[:100])
    return 0


def cmd_events_redrive(args: argparse.Namespace) -> int:
    count = _stack(args).bus.redrive(args.ids or None)
    print(f"{count} dead letter(s) queued for delivery again")
    return 0


# -- alerts --------------------------------------------------------------------------------------
INTERNAL_KEYS = frozenset({"pk", "sk", "rev"})


def cmd_alerts_tail(args: argparse.Namespace) -> int:
    stack = _stack(args)
    for entry in stack.notifier.tail(follow=args.follow):
        if args.json:  # one object per line: a follower reads them as they come
            print(json.dumps(json_ready(entry), ensure_ascii=False), flush=True)
        else:
            print(f"[{iso(entry['time'])}] {entry['topic']}: {entry['subject']}", flush=True)
    return 0


def _acks(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The alert's acknowledgement history (by, at, verdict, note), oldest first."""
    from shared.usecases.operator_alerts import acks

    return acks(item)


def _ack_by(ack: Mapping[str, Any]) -> str:
    return str(ack.get("by") or "?")


def _ack_at(ack: Mapping[str, Any]) -> Any:
    return ack.get("at")


def _top_features(item: Mapping[str, Any], count: int = 3) -> str:
    shares = sorted(((str(k), float(v)) for k, v in (item.get("contributions") or {}).items()),
                    key=lambda kv: (-kv[1], kv[0]))
    named = [f"{name} ({share * 100:.0f} %)" for name, share in shares[:count]]
    named += [f"{name} (missing)" for name in item.get("missing") or []]
    return ", ".join(named) or ", ".join(item.get("features") or []) or "-"


def cmd_alerts_list(args: argparse.Namespace) -> int:
    from shared.usecases.alerts import list_alerts

    items = list_alerts(_stack(args).alert_deps(), status=args.status)
    if args.json:
        print_json([{k: v for k, v in i.items() if k not in INTERNAL_KEYS} for i in items])
        return 0
    if not items:
        print("no alerts")
        return 0
    rows = []
    for i in items:
        acks = _acks(i)
        rows.append([i["alert_id"], i.get("severity", ""), i.get("status", ""),
                     iso(i.get("first_seen_at") or i.get("window_start")),
                     _ack_by(acks[-1]) + (f" ({acks[-1]['verdict']})" if acks[-1].get("verdict") else "")
                     if acks else "-"])
    print(table(["alert", "severity", "status", "since", "acknowledged"], rows))
    print("notifications sent and their text: nacelle alerts show <alert>")
    return 0


def cmd_alerts_show(args: argparse.Namespace) -> int:
    from shared.usecases.alerts import get_alert

    stack = _stack(args)
    item = get_alert(args.alert_id, stack.alert_deps())
    log = {str(e.get("id")): e for e in stack.notifier.tail()}
    from shared.usecases.operator_alerts import notifications as sent

    notifications, acks = sent(item, log), _acks(item)
    if args.json:
        doc = {k: v for k, v in item.items() if k not in INTERNAL_KEYS | {"acks"}}
        print_json({**doc, "notifications": notifications, "acks": acks})
        return 0
    kind = str(item.get("kind") or "alert")
    severity = str(item.get("severity") or "-") + (f" (escalated: {item['escalated']})" if item.get("escalated")
                                                  else "")
    rows: list[tuple[str, Any]] = [("alert", item["alert_id"]), ("kind", kind), ("turbine", item.get("turbine_id")),
                                   ("severity", severity), ("status", item.get("status"))]
    times = (("started", "started_at"), ("opened", "opened_at"), ("last flagged", "last_flagged_at"),
             ("ended", "ended_at"), ("first seen", "first_seen_at"), ("silent since", "last_health_at"),
             ("window", "window_start"), ("due", "due_at"))
    rows += [(name, iso(item[key])) for name, key in times if item.get(key) is not None]
    if item.get("model_version") is not None:
        rows.append(("model", f"v{item['model_version']}"))
    if item.get("score"):
        rows.append(("score", f"{float(item['score']):.2f}x the threshold"))
    if kind == "episode" or item.get("features"):
        rows.append(("top features", _top_features(item)))
    if item.get("alert") == "folded":
        rows.append(("notified in", f"summary {item.get('summary_id')} (the turbine's alert rate limit)"))
    if item.get("continues"):
        rows.append(("notified in", f"{item['continues']} (this episode carries that interrupted one on)"))
    if item.get("continued_by"):
        rows.append(("carried on by", f"episode {item['continued_by']} (the detector changed model or restarted)"))
    if item.get("episodes"):
        rows.append(("episodes", ", ".join(item["episodes"])))
    for name, value in rows:
        print(f"{name:13s} {'-' if value in (None, '') else value}")
    print("notifications:")
    for n in notifications:
        print(f"  {n['kind']} {n['state']}" + (f" at {iso(n['at'])}" if n["at"] else ""))
        if n["subject"]:
            print(f"    {n['subject']}")
            for line in str(n["message"] or "").splitlines():
                print(f"    | {line}" if line else "    |")
    if not notifications:
        print("  none sent")
    print("acknowledgements:")
    for a in acks:
        verdict = f", verdict {a['verdict']}" if a.get("verdict") else ""
        note = f": {a['note']}" if a.get("note") else ""
        print(f"  {iso(_ack_at(a))}  {_ack_by(a)}{verdict}{note}")
    if not acks:
        print(f"  none (nacelle alerts ack {item['alert_id']} [--verdict fault|false-alarm])")
    if item.get("label_key"):
        print(f"  the latest verdict is the training label {item['label_key']}")
    return 0


def cmd_alerts_ack(args: argparse.Namespace) -> int:
    from shared.usecases.alerts import acknowledge

    item = acknowledge(args.alert_id, args.by or getpass.getuser(), _stack(args).alert_deps(),
                       verdict=args.verdict, note=args.note or "")
    acks = _acks(item)
    last = acks[-1] if acks else {}
    print(f"{item['alert_id']} acknowledged by {_ack_by(last)} at {iso(_ack_at(last))}"
          + (f"; verdict {last['verdict']} stored as {item.get('label_key')}" if last.get("verdict") else ""))
    return 0


# -- fleet ---------------------------------------------------------------------------------------
def _fleet(stack: Any) -> Any:
    from nacelle.local.adapters.state import SqliteStateStore
    from nacelle.local.edge.fleet import Fleet

    return Fleet(stack.paths.home, stack.greengrass, size=0, canary_size=0, state=stack.state,
                 alerts=SqliteStateStore(stack.paths.alerts_db))


def _rollout_deps(stack: Any) -> Any:
    return stack.deps_for("services.deployment_status.app")  # the RolloutDeps the deployment_status Lambda gets


def device_state(row: Mapping[str, Any], offline_after_s: float, now: float) -> str:
    """OFFLINE when its last health is older than the offline limit (or it never sent one), STOPPED when its
    nucleus is not running, else ONLINE (shared.usecases.operator_fleet.device_state)."""
    from nacelle.console import as_datetime
    from shared.usecases.operator_fleet import device_state as state

    last = as_datetime(row.get("last_health_at"))
    return state(last.timestamp() if last is not None else None, offline_after_s, now,
                 running=str(row["processes"].get("nucleus") or row["processes"].get("light")).startswith("running"))


def source_cell(source: Mapping[str, Any] | None, now: float) -> str:
    """ok | down <age> | stale <age> | finished | - (no sensors block: shared.source_status)."""
    from nacelle.console import age

    if not source:
        return "-"
    if source["status"] in ("down", "stale"):
        return f"{source['status']} {age(source['since'], now)}" if source.get("since") else source["status"]
    return str(source["status"])


def source_note(source: Mapping[str, Any] | None) -> str:
    """The note under the table for a source that is not ok: since when, and why."""
    from nacelle.console import iso

    if not source or source["status"] in ("ok", "finished"):
        return ""
    since = f" since {iso(source['since'])}" if source.get("since") else " (no value read yet)"
    what = "stopped reporting" if source["status"] == "stale" else f"down ({source['state']})"
    error = f": {source['last_error']}" if source.get("last_error") else ""
    return f"{source['source']} source {what}{since}{error}"


def cmd_fleet_status(args: argparse.Namespace) -> int:
    from shared.usecases.operator_fleet import ONLINE

    stack = _stack(args)
    rows, now = _fleet(stack).status(), time.time()
    limit = float(stack.settings.offline_after_s)
    for r in rows:
        r["state"] = device_state(r, limit, now)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no devices yet: `nacelle up --devices N` provisions and starts them")
        return 0
    roles = _roles(stack)
    print(table(["device", "group", "model", "rate Hz", "last health", "state", "source", "episodes", "deployment"],
                [[r["thing"], ",".join(roles.get(g, g.removeprefix("nacelle-")) for g in r["groups"]) or "-",
                  "-" if r["model_version"] is None else f"v{r['model_version']}",
                  r["inference_rate_hz"] if r["state"] == ONLINE else None, age(r["last_health_at"], now),
                  r["state"], source_cell(r.get("source"), now),
                  f"{r['episodes']['total']} ({r['episodes']['open']} open)",
                  r["deployment"]["status"] if r["deployment"] else "-"] for r in rows]))
    print(f"(OFFLINE: no health for over {limit:g} s; source: the sensor source its health reports; details: --json)")
    running_anywhere = any(p.startswith("running") for r in rows for p in r["processes"].values())
    if not running_anywhere:
        print("no device process runs on this data directory (`nacelle up --devices N` starts them)")
    for r in rows:
        notes = []
        if r["deployment"] and r["deployment"]["status"] == "FAILED":
            notes.append(f"{r['deployment']['name']} FAILED: {r['deployment']['reason']}")
        if running_anywhere:
            notes += [f"{kind} {state}" for kind, state in r["processes"].items() if state != "running"]
        missing = {k: n for k, n in r["messages_missing"].items() if n}  # what the cloud noticed of its messages
        notes.append(source_note(r.get("source")))
        notes += [r["unexpected_version"] or "",
                  ", ".join(f"{n} {stream} message(s) missing" for stream, n in sorted(missing.items())),
                  ", ".join(f"{n} refused ({reason})" for reason, n in sorted(r["messages_refused"].items()))]
        if any(notes):
            print(f"{r['thing']}: {'; '.join(n for n in notes if n)}")
    return 0


def cmd_fleet_deployments(args: argparse.Namespace) -> int:
    """Every deployment, newest first: the model it carries, its rollout stage, target group and status."""
    from shared.records import DeploymentRecord, load
    from shared.usecases import state_keys as sk
    from shared.usecases.operator_models import model_version_of
    from shared.usecases.rollout_state import DEPLOYMENT

    stack = _stack(args)
    roles = _roles(stack)
    docs = []
    for d in stack.greengrass.list_deployments():
        # the rollout's record of it (None: a deployment the rollout did not make)
        owner = load(DeploymentRecord, stack.state.get(sk.group_pk(stack.settings.group), DEPLOYMENT + d.deployment_id))
        executions = stack.greengrass.executions(d.deployment_id)
        group = d.target_arn.rsplit("/", 1)[-1]
        if ":thing/" in d.target_arn:  # a deployment to one device (its nacelle.sensors): "thing/<name>"
            group = d.target_arn.rsplit(":", 1)[-1]
        docs.append({"deployment_id": d.deployment_id, "name": d.name, "model_version": model_version_of(d.components),
                     "stage": owner.stage if owner is not None else None, "target_group": group,
                     "role": roles.get(group),
                     "status": d.status, "created_at": d.created_at, "revision": d.revision,
                     "components": {name: spec.get("componentVersion") for name, spec in d.components.items()},
                     "executions": [{"thing": e.thing, "status": e.status, "reason": e.reason,
                                     "modified_at": e.modified_at} for e in executions]})
    if args.json:
        print_json(docs)
        return 0
    if not docs:
        print("no deployments yet: an approved, compiled version goes to the canary group first")
        return 0
    rows = []
    for doc in docs:
        statuses = [e["status"] for e in doc["executions"]]
        done = sum(s in ("SUCCEEDED", "COMPLETED") for s in statuses)
        failed = sum(s in ("FAILED", "REJECTED", "TIMED_OUT") for s in statuses)
        rows.append([doc["deployment_id"][:8], "-" if doc["model_version"] is None else f"v{doc['model_version']}",
                     doc["stage"] or "-", doc["target_group"], doc["status"],
                     f"{done}/{len(statuses)}" + (f" ({failed} failed)" if failed else ""),
                     iso(doc["created_at"])])
    print(table(["deployment", "model", "stage", "target group", "status", "devices ok", "created"], rows))
    return 0


def cmd_fleet_inject(args: argparse.Namespace) -> int:
    from nacelle.simulator.device import request_fault

    stack = _stack(args)
    if args.turbine not in {d.thing for d in stack.greengrass.devices()}:
        raise NacelleError(f"no device {args.turbine} (see `nacelle fleet status`)")
    path = request_fault(stack.paths.home, args.turbine, args.fault, args.severity, args.duration)
    print(f"{args.turbine}: {args.fault} ({args.severity}, {args.duration:g} s) requested ({path.name})")
    return 0


def cmd_fleet_drift(args: argparse.Namespace) -> int:
    from nacelle.simulator.device import request_drift

    stack = _stack(args)
    if args.turbine not in {d.thing for d in stack.greengrass.devices()}:
        raise NacelleError(f"no device {args.turbine} (see `nacelle fleet status`)")
    path = request_drift(stack.paths.home, args.turbine, args.drift, args.magnitude)
    print(f"{args.turbine}: {args.drift} drift (magnitude {args.magnitude:g}) requested ({path.name}); it lasts, "
          f"labelled in devices/{args.turbine}/sim/drifts.jsonl")
    return 0


def cmd_fleet_rollback(args: argparse.Namespace) -> int:
    from shared.usecases.rollout_ops import rollback_to

    stack = _stack(args)
    outcome = rollback_to(args.to, _rollout_deps(stack))
    print(f"{outcome.action}: {outcome.detail}")
    for key, value in sorted(outcome.data.items()):
        print(f"  {key}: {value}")
    return 0


def cmd_fleet_cancel(args: argparse.Namespace) -> int:
    from shared.usecases.rollout_ops import cancel

    stack = _stack(args)
    outcome = cancel(args.deployment, _rollout_deps(stack))
    print(f"{outcome.action}: {outcome.detail}")
    return 0


# -- the command tree ------------------------------------------------------------------------------
Positional = tuple[str, Any, str]  # name, type, help


def _action(group: Any, common: argparse.ArgumentParser, name: str, help_text: str, func: Any,
            *positional: Positional, json_flag: bool = False) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help_text,
                                                       description=help_text)
    for arg, kind, arg_help in positional:
        parser.add_argument(arg, type=kind, help=arg_help)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON (numbers as numbers, times ISO 8601 UTC)")
    parser.set_defaults(func=func)
    return parser


def _group(sub: Any, common: argparse.ArgumentParser, name: str, help_text: str) -> Any:
    return sub.add_parser(name, parents=[common], help=help_text, description=help_text).add_subparsers(
        dest=f"{name}_command", required=True, metavar="ACTION")


VERSION: Positional = ("version", parse_version, "model version, e.g. 2 or v2 (see `nacelle models list`)")
JOB: Positional = ("job", str, "job name (see `nacelle jobs list`)")
ALERT: Positional = ("alert_id", str, "alert id (see `nacelle alerts list`)")


def add_fleet_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    from nacelle.simulator.drifts import DRIFTS
    from nacelle.simulator.faults import FAULTS, SEVERITIES

    fleet = _group(sub, common, "fleet", "the simulated core devices and their deployments")
    _action(fleet, common, "status", "every device: group, model, inference rate, health, episodes, deployment",
            cmd_fleet_status, json_flag=True)
    _action(fleet, common, "deployments", "every deployment, newest first: model, rollout stage, target group, "
                                          "status", cmd_fleet_deployments, json_flag=True)
    inject = _action(fleet, common, "inject", "make a turbine's simulator develop a fault", cmd_fleet_inject,
                     ("turbine", str, "the device, e.g. turbine-02 (see `nacelle fleet status`)"))
    inject.add_argument("fault", choices=FAULTS, metavar="fault",
                        help=f"one of the simulator's faults: {', '.join(FAULTS)}")
    inject.add_argument("--severity", default="medium", choices=list(SEVERITIES),
                        help=f"{' | '.join(SEVERITIES)} (default medium)")
    inject.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    drift = _action(fleet, common, "drift", "make a turbine's simulator drift for good (not a fault: the season, a "
                                           "recalibrated sensor, a replaced component)", cmd_fleet_drift,
                    ("turbine", str, "the device, e.g. turbine-02 (see `nacelle fleet status`)"))
    drift.add_argument("drift", choices=DRIFTS, metavar="kind", help=f"one of: {', '.join(DRIFTS)}")
    drift.add_argument("--magnitude", type=float, default=1.0,
                       help="scales the kind's change (default 1; docs/fleet.md \"Drift monitoring\")")
    _action(fleet, common, "rollback", "deploy an earlier approved version to both thing groups",
            cmd_fleet_rollback).add_argument("--to", type=parse_version, required=True, metavar="VERSION",
                                              help="the model version to roll back to, e.g. 1 or v1")
    _action(fleet, common, "cancel", "cancel a deployment (its rollout stops)", cmd_fleet_cancel,
            ("deployment", str, "deployment id (see `nacelle fleet deployments --json`)"))


def add_stack_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    up = _action(sub, common, "up", "run the local stack in the foreground (Ctrl-C stops it); creates the data "
                                    "directory", cmd_up)
    up.add_argument("--devices", type=int, default=5, help="simulated core devices turbine-01… (default 5; 0: none)")
    up.add_argument("--canary-size", type=int, default=1, help="devices in nacelle-canary (default 1)")
    up.add_argument("--full-devices", type=int, metavar="K",
                    help="run only the first K devices in full (nucleus + simulator processes), the others as light "
                         "devices, many per process (default: all up to 10 devices, else 3; README \"Light devices\")")
    up.add_argument("--source", choices=("sim", "modbus", "opcua"), default="sim",
                    help="each device's sensor stream: sim (the simulator publishes it), modbus or opcua (a simulated "
                         "controller serves it and the nacelle.sensors component reads it; docs/sensors.md)")
    up.add_argument("--console-port", type=int, metavar="PORT",
                    help="the operator console's port on 127.0.0.1 (default 8640 when free, else any free port; "
                         "0: any free port)")
    console = _action(sub, common, "console", "print the operator console's URL (with its access token) of the "
                                              "running stack", cmd_console)
    console.add_argument("--open", action="store_true", help="also open it in the default browser")
    add_fleet_commands(sub, common)

    models = _group(sub, common, "models", "the model registry")
    _action(models, common, "list", "every version: status, champion, where it is deployed, headline metrics",
            cmd_models_list, json_flag=True)
    _action(models, common, "show", "one version with metrics, lineage, deployment and history", cmd_models_show,
            VERSION, json_flag=True)
    for name, func in (("approve", cmd_models_approve), ("reject", cmd_models_reject)):
        p = _action(models, common, name, f"{name} a version (recorded with who, when, why)", func, VERSION)
        p.add_argument("--reason", help="why (recorded in the approval history)")
        p.add_argument("--by", help="who (default: the current user)")
        if name == "approve":
            p.add_argument("--override-gate", action="store_true",
                           help="approve a version the quality gate rejected (needs --reason; recorded)")

    jobs = _group(sub, common, "jobs", "training and compile jobs")
    _action(jobs, common, "list", "every job with its status", cmd_jobs_list, json_flag=True)
    _action(jobs, common, "show", "one job: status, times, progress, request", cmd_jobs_show, JOB, json_flag=True)
    logs = _action(jobs, common, "logs", "a job's log; --follow keeps printing while it runs (exit 1 when it "
                                         "fails)", cmd_jobs_logs, JOB)
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing while the job runs")
    logs.add_argument("--progress", action="store_true",
                      help="only the lines that say how far it is (epoch k/n and loss, candidates, the choice)")
    _action(jobs, common, "retry", "run a failed job again (next attempt)", cmd_jobs_retry, JOB)

    events = _group(sub, common, "events", "the local event bus")
    _action(events, common, "dlq", "dead letters: deliveries that kept failing", cmd_events_dlq, json_flag=True)
    _action(events, common, "redrive", "deliver dead letters again", cmd_events_redrive).add_argument(
        "ids", nargs="*", type=int, help="delivery ids (default: all)")

    alerts = _group(sub, common, "alerts", "notifications (SNS stand-in)")
    tail = _action(alerts, common, "tail", "print notifications; --follow keeps waiting", cmd_alerts_tail,
                   json_flag=True)
    tail.add_argument("--follow", "-f", action="store_true", help="wait for new notifications")
    listing = _action(alerts, common, "list", "every alert (episodes, offline, summaries), newest first",
                      cmd_alerts_list, json_flag=True)
    listing.add_argument("--status", choices=["open", "closed", "pending", "sent"], help="only this status")
    _action(alerts, common, "show", "one alert as sent: turbine, severity, times, top features, the "
                                    "notification text, acknowledgements", cmd_alerts_show, ALERT, json_flag=True)
    ack = _action(alerts, common, "ack", "acknowledge an alert (stops its escalation)", cmd_alerts_ack, ALERT)
    ack.add_argument("--verdict", choices=["fault", "false-alarm"],
                     help="stored as a label under labels/alerts/ for the next training")
    ack.add_argument("--note", help="free text kept with the acknowledgement and the label")
    ack.add_argument("--by", help="who (default: the current user)")
