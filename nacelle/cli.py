"""The `nacelle` command line. Every subcommand has --help."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.errors import NacelleError

Handler = Callable[[argparse.Namespace], int]


def _parse_hp(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise NacelleError(f"--hp takes key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def cmd_data_generate(args: argparse.Namespace) -> int:
    from nacelle.simulator.generate import generate_dataset

    start = datetime.fromisoformat(args.start.replace("Z", "+00:00")) if args.start else None
    result = generate_dataset(Path(args.out), args.turbines, args.hours, args.faults, args.seed, start)
    print(f"wrote {len(result.files)} file(s), {result.rows} rows, {len(result.episodes)} fault episode(s) "
          f"to {args.out} (labels: {result.labels})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from nacelle.console import metrics_table, selection_table
    from nacelle.train_runner import run_training_job

    out = Path(args.out)
    job_name = args.job_name or f"local-{datetime.now():%Y%m%dT%H%M%S}"
    result = run_training_job(out, job_name, {"train": Path(args.data)}, _parse_hp(args.hp),
                              spec_file=Path(args.spec) if args.spec else None)
    if not result.ok:
        print(f"training failed: {result.failure_reason} (log: {result.log_file})", file=sys.stderr)
        return 1
    evaluation = json.loads((out / "output" / "data" / "evaluation.json").read_text())
    held_out = "5 blocked folds" if evaluation["data"]["mode"] == "folds" else "the test slice"
    print()
    print(f"candidates on the validation faults ({evaluation['selection']['candidates'][0]['validation_labels']}):")
    print(selection_table(evaluation["selection"]))
    print()
    print(f"the chosen model on held-out data ({held_out}, {evaluation['data']['labels']} faults):")
    print(metrics_table(evaluation["candidate"]))
    print(f"model:  {result.model_archive}")
    print(f"report: {out / 'output' / 'data' / 'report.png'}")
    return 0


def _check_outputs(data: Path, model: Path, outputs: dict[str, str | None]) -> None:
    """Exports never overwrite the data, the model or each other (checked before anything is scored)."""
    seen: dict[Path, str] = {}
    for option, target in outputs.items():
        if not target or target == "-":
            continue
        path = Path(target).resolve()
        if path in seen:
            raise NacelleError(f"{option} and {seen[path]} name the same file {target}")
        if path == model.resolve() or path == data.resolve() or data.resolve() in path.parents:
            raise NacelleError(f"{option} {target}: would overwrite the model or the data it scores; "
                               "write it outside --data")
        seen[path] = option


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nacelle.eval_exports import STDOUT, episode_table, has_labels, output_format, point_table, write_table
    from training_jobs.evaluation import evaluate_model_on

    if args.episodes == STDOUT and args.points == STDOUT:
        raise NacelleError("only one of --episodes and --points can go to stdout ('-')")
    data = Path(args.data)
    _check_outputs(data, Path(args.model), {"--episodes": args.episodes, "--points": args.points})
    metrics, scored, episodes, faults, detector = evaluate_model_on(Path(args.model), data)
    if args.episodes:
        write_table(episode_table(episodes), args.episodes, output_format(args.episodes, args.format))
    if args.points:
        labelled = faults if has_labels(data, detector.spec, faults) else None
        write_table(point_table([(s.turbine_id, s.t) for s in scored], episodes, labelled), args.points,
                    output_format(args.points, args.format))
    # stdout stays parseable when an export goes there
    print(json.dumps(metrics, indent=2), file=sys.stderr if STDOUT in (args.episodes, args.points) else sys.stdout)
    return 0


def cmd_spec_check(args: argparse.Namespace) -> int:
    from nacelle.spec_tools import check, render
    from training_jobs.hyperparameters import Hyperparameters

    result = check(Path(args.data), Path(args.spec), Hyperparameters.from_mapping(_parse_hp(args.hp)))
    print(json.dumps(result.to_dict(), indent=2) if args.json else render(result))
    return 0 if result.trainable else 1


def cmd_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")  # the demo prints its own progress
    if args.which == "drift":
        from nacelle.demo_drift import run_drift_demo

        return run_drift_demo(Path(args.workdir or ".nacelle/demo-drift").resolve())
    from nacelle.demo import run_demo

    return run_demo(Path(args.workdir or ".nacelle/demo").resolve())


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nacelle")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from nacelle import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    from nacelle.commands import add_stack_commands, cmd_data_put, cmd_data_retire, cmd_data_status, cmd_spec_put

    parser = argparse.ArgumentParser(prog="nacelle", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--data-dir", default=None,
                        help="the local stack's data directory (default $NACELLE_HOME or ./.nacelle); only `up`, "
                             "`data put` and `spec put` create it")
    # --data-dir is accepted after the subcommand too
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", parents=[common], help="generate and upload sensor data").add_subparsers(
        dest="data_command", required=True, metavar="ACTION")
    put = data.add_parser("put", parents=[common],
                          help="upload files or directories to raw/ (labels.json to labels/)")
    put.add_argument("paths", nargs="+", help="files or directories; keys are relative to each one's parent")
    put.set_defaults(func=cmd_data_put)
    retire = data.add_parser("retire", parents=[common],
                             help="leave a raw/ or labels/ object out of every future dataset (it stays untouched)")
    retire.add_argument("key", help="the object key, e.g. raw/wt-01/2026-03.csv")
    retire.add_argument("--reason", required=True, help="why (recorded with who and when)")
    retire.add_argument("--by", help="who (default: the current user)")
    retire.set_defaults(func=cmd_data_retire)
    status = data.add_parser("status", parents=[common],
                             help="new data against the retraining threshold, quiet period left, running job")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_data_status)
    gen = data.add_parser("generate", help="write simulated turbine data with labelled faults")
    gen.add_argument("--turbines", type=int, default=3, help="number of turbines (default 3)")
    gen.add_argument("--hours", type=float, default=1.0, help="hours per turbine (default 1)")
    gen.add_argument("--faults", default="default",
                     help="none | default | comma-separated fault names (default: default)")
    gen.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
    gen.add_argument("--start", help="ISO start time, UTC (default 2026-01-01T00:00:00Z)")
    gen.add_argument("--out", required=True, help="output directory")
    gen.set_defaults(func=cmd_data_generate)

    tr = sub.add_parser("train", help="train a model locally under the SageMaker training contract")
    tr.add_argument("--data", required=True, help="directory of sensor CSV files (and labels.json)")
    tr.add_argument("--out", required=True, help="job directory (laid out like /opt/ml)")
    tr.add_argument("--spec", help="feature spec YAML/JSON (default: the mini-turbine spec)")
    tr.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="hyperparameters")
    tr.add_argument("--job-name", help="job name recorded in the lineage")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="score a model on a data directory; prints the metrics JSON")
    ev.add_argument("--model", required=True, help="model.tar.gz or model directory")
    ev.add_argument("--data", required=True, help="directory of sensor CSV files (labels.json optional)")
    ev.add_argument("--episodes", metavar="OUT",
                    help="write the episodes to OUT ('-': stdout, the metrics then go to stderr)")
    ev.add_argument("--points", metavar="OUT", help="write per-sample decisions (flagged, and fault when "
                                                    "labelled) to OUT ('-': stdout, the metrics then go to stderr)")
    ev.add_argument("--format", choices=["csv", "json"],
                    help="format of --episodes/--points (default: json for a .json name, else csv)")
    ev.set_defaults(func=cmd_evaluate)

    spec = sub.add_parser("spec", parents=[common], help="check data against a feature spec; install a spec"
                          ).add_subparsers(dest="spec_command", required=True, metavar="ACTION")
    chk = spec.add_parser("check", parents=[common], help="validate data files and show what training would do "
                                                          "(exit 0 trainable, 1 not)")
    chk.add_argument("data", help="a data file or a directory of them (and labels.json)")
    chk.add_argument("--spec", required=True, help="feature spec YAML/JSON")
    chk.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE",
                     help="hyperparameters, as for `nacelle train`")
    chk.add_argument("--json", action="store_true", help="print JSON")
    chk.set_defaults(func=cmd_spec_check)
    sput = spec.add_parser("put", parents=[common], help="install a spec on the local stack as the group's "
                                                         "only one (specs/<group>/<file name>)")
    sput.add_argument("file", help="feature spec YAML/JSON (.yaml, .yml or .json)")
    sput.add_argument("--group", help="model package group (default: the stack's, normally nacelle-turbine)")
    sput.set_defaults(func=cmd_spec_put)

    demo = sub.add_parser("demo", help="the main job on the local stack (what `make run` runs); `demo drift`: the "
                                       "field loop (drift, captured data, retraining, canary, fleet)")
    demo.add_argument("which", nargs="?", choices=("mission", "drift"), default="mission",
                      help="mission (default, `make run`) or drift (`make demo-drift`)")
    demo.add_argument("--workdir", default=None,
                      help="the demo's own data directory, wiped at the start (default .nacelle/demo, "
                           ".nacelle/demo-drift)")
    demo.set_defaults(func=cmd_demo)
    add_stack_commands(sub, common)
    from nacelle.aws_tools import add_aws_commands

    add_aws_commands(sub, common)
    return parser


SIGPIPE_EXIT = 141  # what a shell reports for a command whose reader went away (128 + SIGPIPE)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: the reader is gone, and the flush at exit must not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a file descriptor (captured output)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "nacelle-local")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:  # --help, --version or a usage error: already printed
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # `nacelle ... --help | head`
            _quiet_stdout()
        raise
    handler: Handler = args.func
    previous = _terminate_as_interrupt()
    try:
        code = handler(args)
        sys.stdout.flush()  # a reader that left (`| head`) is noticed here, not at exit
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return SIGPIPE_EXIT
    except NacelleError as exc:
        print(f"nacelle: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt() -> Any:
    """SIGTERM unwinds a command as Ctrl-C does, so that what it started (a stack, a demo's devices) is stopped
    by the same cleanup; returns the handler it replaced (None off the main thread, where none can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, interrupt)


def entry() -> Any:
    sys.exit(main())


if __name__ == "__main__":
    entry()
