"""Subcommands that work on the local stack's data directory, whether or not `nacelle up` runs."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacelle.console import table
from shared.errors import Conflict, NacelleError


def _stack(args: argparse.Namespace) -> Any:
    from nacelle.local.stack import Stack, home_from

    return Stack(home_from(args.data_dir))


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


# -- up ------------------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    from nacelle.local.stack import home_from
    from nacelle.local.up import run_up

    return run_up(home_from(args.data_dir), devices=args.devices, canary_size=args.canary_size)


# -- data put ------------------------------------------------------------------------------------
@dataclass
class UploadPlan:
    files: list[tuple[Path, str]] = field(default_factory=list)  # (file, key)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (printable path, reason)


def upload_keys(paths: list[Path]) -> UploadPlan:
    """(file, key): raw/<path relative to the argument's parent>; labels.json files go to labels/.
    Entries that cannot become objects (symbolic links, names that are not valid UTF-8 or hold a
    backslash, a control character or a '..' segment) are refused one by one; links are never followed."""
    from nacelle.local.objectstore import key_problem

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
    stack = _stack(args)
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
    return 1 if plan.refused else 0


def cmd_data_retire(args: argparse.Namespace) -> int:
    from shared.usecases.retraining import retire_file

    stack = _stack(args)
    record = retire_file(stack.arrival_deps(), args.key, args.by or getpass.getuser(), args.reason)
    print(f"retired {args.key} (was {record['status_before_retirement']}) by {record['retired_by']} at "
          f"{record['retired_at']}: {record['retired_reason']}; future datasets leave it out")
    return 0


# -- spec put ------------------------------------------------------------------------------------
def cmd_spec_put(args: argparse.Namespace) -> int:
    from nacelle.spec_tools import SpecFile, install_spec

    spec_file = SpecFile.read(Path(args.file))  # refused before the stack is touched
    stack = _stack(args)
    installed = install_spec(stack.store, args.group or stack.settings.group, spec_file)
    spec = spec_file.spec
    state = "already installed (identical)" if installed.unchanged else "installed"
    print(f"{state} {installed.key}: spec {spec.name!r} version {spec.version}, digest {spec.digest()} "
          f"(file sha256 {spec_file.sha256})")
    for key in installed.replaced:
        print(f"removed {key}")
    return 0


# -- models --------------------------------------------------------------------------------------
def _version_dict(v: Any, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out = {"version": v.version, "status": v.status, "group": v.group, "model_data_key": v.model_data_key,
           "failed": v.failed, "description": v.description, "created_at": v.created_at,
           "metadata": dict(v.metadata), "arn": v.arn}
    if history is not None:
        out["history"] = history
    return out


def cmd_models_list(args: argparse.Namespace) -> int:
    stack = _stack(args)
    versions = stack.registry.list(stack.settings.group)
    if args.json:
        _print_json([_version_dict(v) for v in versions])
        return 0
    rows = [[v.version, v.status + (" (failed)" if v.failed else ""), v.metadata.get("metric:event_f1"),
             v.metadata.get("metric:false_alarms_per_turbine_day"), v.metadata.get("nacelle:job"),
             str(v.created_at)[:19]] for v in versions]
    print(table(["version", "status", "event_f1", "FA/day", "job", "created"], rows))
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    stack = _stack(args)
    v = stack.registry.get(stack.settings.group, args.version)
    doc = _version_dict(v, stack.registry.history(stack.settings.group, args.version))
    if args.json:
        _print_json(doc)
    else:
        for key, value in doc.items():
            if key not in ("metadata", "history"):
                print(f"{key:16s} {value}")
        print("metadata:")
        for key, value in sorted(v.metadata.items()):
            print(f"  {key:34s} {value}")
        print("history:")
        for h in doc["history"]:
            print(f"  {h['at']}  {h['status']:22s} by {h['actor']}: {h['reason']}")
    return 0


def _set_status(args: argparse.Namespace, status: str) -> int:
    stack = _stack(args)
    v = stack.registry.set_status(stack.settings.group, args.version, status, args.reason or status.lower(),
                                  args.by or getpass.getuser())
    print(f"{v.group} version {v.version} is now {v.status}")
    return 0


def cmd_models_approve(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from shared.usecases.approval import approve

    stack = _stack(args)
    v = approve(stack.registry, stack.settings.group, args.version, args.by or getpass.getuser(),
                args.reason or "", datetime.now(UTC), override_gate=args.override_gate)
    override = " (quality gate overridden)" if args.override_gate and v.metadata.get("nacelle:gate_override") else ""
    print(f"{v.group} version {v.version} is now {v.status}{override}")
    return 0


def cmd_models_reject(args: argparse.Namespace) -> int:
    return _set_status(args, "Rejected")


# -- jobs ----------------------------------------------------------------------------------------
def cmd_jobs_list(args: argparse.Namespace) -> int:
    jobs = _stack(args).jobs.list()
    if args.json:
        _print_json([j.to_dict() for j in jobs])
        return 0
    print(table(["job", "kind", "status", "created", "ended", "reason"],
                [[j.name, j.kind, j.status, j.created_at[:19], (j.ended_at or "")[:19],
                  (j.failure_reason or "")[:60]] for j in jobs]))
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    job = _stack(args).jobs.get(args.job)
    _print_json(job.to_dict()) if args.json else [print(f"{k:16s} {v}") for k, v in job.to_dict().items()]
    return 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    stack = _stack(args)
    job = stack.jobs.get(args.job)
    logs = [job.job_dir / "runner.log", job.job_dir / "output" / "train.log"]
    path = next((p for p in reversed(logs) if p.is_file()), logs[0])
    if not path.is_file():
        raise NacelleError(f"{args.job} has no log yet")
    with path.open(encoding="utf-8", errors="replace") as fh:
        while True:
            line = fh.readline()
            if line:
                sys.stdout.write(line)
            elif not args.follow or stack.jobs.get(args.job).status != "InProgress":
                return 0
            else:
                time.sleep(0.5)


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    from shared.usecases.compilation import retry_compile
    from shared.usecases.retraining import retry_training

    stack = _stack(args)
    job = stack.jobs.get(args.job)
    if job.kind == "compile":
        outcome = retry_compile(int(job.request["version"]), stack.compile_deps())
    else:
        outcome = retry_training(stack.arrival_deps(), args.job)
    print(f"{outcome.action}: {outcome.detail}")
    return 0


# -- events --------------------------------------------------------------------------------------
def cmd_events_dlq(args: argparse.Namespace) -> int:
    dead = _stack(args).bus.dlq()
    if args.json:
        _print_json([d.__dict__ if hasattr(d, "__dict__") else d for d in dead])
        return 0
    print(table(["id", "target", "event", "attempts", "last error"],
                [[d.id, d.target, d.event_id, d.attempts, (d.last_error or "")[:70]] for d in dead]))
    return 0


def cmd_events_redrive(args: argparse.Namespace) -> int:
    count = _stack(args).bus.redrive(args.ids or None)
    print(f"{count} dead letter(s) queued for delivery again")
    return 0


# -- alerts --------------------------------------------------------------------------------------
def cmd_alerts_tail(args: argparse.Namespace) -> int:
    stack = _stack(args)
    for entry in stack.notifier.tail(follow=args.follow):
        if args.json:
            print(json.dumps(entry), flush=True)
        else:
            print(f"[{entry['time']}] {entry['topic']}: {entry['subject']}", flush=True)
    return 0


def _when(epoch: Any) -> str:
    from datetime import UTC, datetime

    return "" if not epoch else datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_alerts_list(args: argparse.Namespace) -> int:
    from shared.usecases.alerts import list_alerts

    items = list_alerts(_stack(args).alert_deps(), status=args.status)
    if args.json:
        _print_json(items)
        return 0
    if not items:
        print("no alerts")
        return 0
    print(table(["alert", "turbine", "severity", "status", "notified", "since", "acked by", "verdict"],
                [[i["alert_id"], i.get("turbine_id", ""), i.get("severity", ""), i.get("status", ""),
                  ",".join(k for k in ("alert", "escalation", "resolution") if i.get(k) == "sent")
                  or i.get("alert") or "", _when(i.get("first_seen_at") or i.get("window_start")),
                  i.get("acked_by") or "", i.get("verdict") or ""] for i in items]))
    return 0


def cmd_alerts_show(args: argparse.Namespace) -> int:
    from shared.usecases.alerts import get_alert

    _print_json(get_alert(args.alert_id, _stack(args).alert_deps()))
    return 0


def cmd_alerts_ack(args: argparse.Namespace) -> int:
    from shared.usecases.alerts import acknowledge

    item = acknowledge(args.alert_id, args.by or getpass.getuser(), _stack(args).alert_deps(),
                       verdict=args.verdict, note=args.note or "")
    print(f"{item['alert_id']} acknowledged by {item['acked_by']} at {_when(item['acked_at'])}"
          + (f"; verdict {item['verdict']} stored as {item['label_key']}" if item.get("verdict") else ""))
    return 0


# -- fleet ---------------------------------------------------------------------------------------
def _fleet(stack: Any) -> Any:
    from nacelle.local.fleet import Fleet
    from nacelle.local.state import SqliteStateStore

    return Fleet(stack.paths.home, stack.greengrass, size=0, canary_size=0, state=stack.state,
                 alerts=SqliteStateStore(stack.paths.alerts_db))


def _rollout_deps(stack: Any) -> Any:
    return stack.deps_for("services.deployment_status.app")  # the RolloutDeps the deployment_status Lambda gets


def _age(epoch: Any) -> str:
    return "" if epoch is None else f"{max(0.0, time.time() - float(epoch)):.0f}s ago"


def cmd_fleet_status(args: argparse.Namespace) -> int:
    rows = _fleet(_stack(args)).status()
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no devices yet: `nacelle up --devices N` provisions and starts them")
        return 0
    print(table(["device", "group", "components", "deployment", "model (health)", "rate Hz", "health",
                 "episodes open/total", "nucleus", "simulator"],
                [[r["thing"], ",".join(g.removeprefix("nacelle-") for g in r["groups"]),
                  " ".join(f"{n.removeprefix('nacelle.')}@{v}" for n, v in r["components"].items()),
                  "" if r["deployment"] is None else f"{r['deployment']['name']} {r['deployment']['status']}",
                  r["model_version"] or "", r["inference_rate_hz"] if r["inference_rate_hz"] is not None else "",
                  _age(r["last_health_at"]), f"{r['episodes']['open']}/{r['episodes']['total']}",
                  r["processes"]["nucleus"], r["processes"]["simulator"]] for r in rows]))
    failed = [r for r in rows if r["deployment"] and r["deployment"]["status"] == "FAILED"]
    for r in failed:
        print(f"{r['thing']}: {r['deployment']['name']} FAILED: {r['deployment']['reason']}")
    for r in rows:  # what the cloud noticed of the device's messages
        missing = {k: n for k, n in r["messages_missing"].items() if n}
        notes = [r["unexpected_version"] or "",
                 ", ".join(f"{n} {stream} message(s) missing" for stream, n in sorted(missing.items())),
                 ", ".join(f"{n} refused ({reason})" for reason, n in sorted(r["messages_refused"].items()))]
        if any(notes):
            print(f"{r['thing']}: {'; '.join(n for n in notes if n)}")
    return 0


def cmd_fleet_inject(args: argparse.Namespace) -> int:
    from nacelle.simulator.device import request_fault

    stack = _stack(args)
    if args.turbine not in {d.thing for d in stack.greengrass.devices()}:
        raise NacelleError(f"no device {args.turbine} (see `nacelle fleet status`)")
    path = request_fault(stack.paths.home, args.turbine, args.fault, args.severity, args.duration)
    print(f"{args.turbine}: {args.fault} ({args.severity}, {args.duration:g} s) requested ({path.name})")
    return 0


def cmd_fleet_rollback(args: argparse.Namespace) -> int:
    from shared.usecases.rollout_ops import rollback_to

    stack = _stack(args)
    outcome = rollback_to(args.to, _rollout_deps(stack))
    print(f"{outcome.action}: {outcome.detail} {json.dumps(outcome.data, default=str)}")
    return 0


def cmd_fleet_cancel(args: argparse.Namespace) -> int:
    from shared.usecases.rollout_ops import cancel

    stack = _stack(args)
    outcome = cancel(args.deployment, _rollout_deps(stack))
    print(f"{outcome.action}: {outcome.detail}")
    return 0


def add_fleet_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    fleet = _group(sub, common, "fleet", "the simulated core devices and their deployments")
    _action(fleet, common, "status", "every device: group, components, deployment, health, episodes",
            cmd_fleet_status, json_flag=True)
    inject = _action(fleet, common, "inject", "make a turbine's simulator develop a fault", cmd_fleet_inject,
                     ("turbine", str), ("fault", str))
    inject.add_argument("--severity", default="medium", help="low | medium | high (default medium)")
    inject.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    _action(fleet, common, "rollback", "deploy an earlier approved version to both thing groups",
            cmd_fleet_rollback).add_argument("--to", type=int, required=True, metavar="VERSION",
                                              help="the model version to roll back to")
    _action(fleet, common, "cancel", "cancel a deployment (its rollout stops)", cmd_fleet_cancel,
            ("deployment", str))


def _action(group: Any, common: argparse.ArgumentParser, name: str, help_text: str, func: Any,
            *positional: tuple[str, type], json_flag: bool = False) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help_text)
    for arg, kind in positional:
        parser.add_argument(arg, type=kind)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=func)
    return parser


def _group(sub: Any, common: argparse.ArgumentParser, name: str, help_text: str) -> Any:
    return sub.add_parser(name, parents=[common], help=help_text).add_subparsers(
        dest=f"{name}_command", required=True, metavar="ACTION")


def add_stack_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    up = _action(sub, common, "up", "run the local stack in the foreground (Ctrl-C stops it)", cmd_up)
    up.add_argument("--devices", type=int, default=5, help="simulated core devices turbine-01… (default 5; 0: none)")
    up.add_argument("--canary-size", type=int, default=1, help="devices in nacelle-canary (default 1)")
    add_fleet_commands(sub, common)

    models = _group(sub, common, "models", "the model registry")
    _action(models, common, "list", "every version of the group", cmd_models_list, json_flag=True)
    _action(models, common, "show", "one version with metrics, lineage and history", cmd_models_show,
            ("version", int), json_flag=True)
    for name, func in (("approve", cmd_models_approve), ("reject", cmd_models_reject)):
        p = _action(models, common, name, f"{name} a version (recorded with who, when, why)", func, ("version", int))
        p.add_argument("--reason", help="why (recorded in the approval history)")
        p.add_argument("--by", help="who (default: the current user)")
        if name == "approve":
            p.add_argument("--override-gate", action="store_true",
                           help="approve a version the quality gate rejected (needs --reason; recorded)")

    jobs = _group(sub, common, "jobs", "training and compile jobs")
    _action(jobs, common, "list", "every job with its status", cmd_jobs_list, json_flag=True)
    _action(jobs, common, "show", "one job", cmd_jobs_show, ("job", str), json_flag=True)
    _action(jobs, common, "logs", "a job's log", cmd_jobs_logs, ("job", str)).add_argument(
        "--follow", "-f", action="store_true", help="keep printing while the job runs")
    _action(jobs, common, "retry", "run a failed job again (next attempt)", cmd_jobs_retry, ("job", str))

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
    _action(alerts, common, "show", "one alert with its notifications and acknowledgement", cmd_alerts_show,
            ("alert_id", str))
    ack = _action(alerts, common, "ack", "acknowledge an alert (stops its escalation)", cmd_alerts_ack,
                  ("alert_id", str))
    ack.add_argument("--verdict", choices=["fault", "false-alarm"],
                     help="stored as a label under labels/alerts/ for the next training")
    ack.add_argument("--note", help="free text kept with the acknowledgement and the label")
    ack.add_argument("--by", help="who (default: the current user)")
