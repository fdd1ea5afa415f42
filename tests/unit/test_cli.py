"""Every `nacelle` subcommand answers --help."""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import pytest

from nacelle import cli
from nacelle.cli import build_parser, main
from nacelle.console import selection_table
from tests.unit.tiny_plant import write_plant, write_spec


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths += command_paths(sub, (*prefix, name))
    return paths


PATHS = command_paths(build_parser())


def test_the_command_tree_is_complete():
    for expected in [("up",), ("data", "put"), ("data", "generate"), ("train",), ("evaluate",), ("demo",),
                     ("models", "list"), ("models", "approve"), ("jobs", "retry"), ("events", "dlq"),
                     ("alerts", "tail"), ("aws", "images"), ("spec", "check"), ("spec", "put")]:
        assert expected in PATHS


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_every_subcommand_has_help(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    assert "usage: nacelle" in capsys.readouterr().out


def test_train_with_a_relative_out_directory(tmp_path, monkeypatch, capsys):
    """The job runs with its directory as cwd: relative --out, --data and --spec must still resolve."""
    monkeypatch.chdir(tmp_path)
    write_plant(Path("data") / "p1.csv", rows=400)
    write_spec(Path("tiny.yaml"))
    assert main(["train", "--data", "data", "--out", "job", "--spec", "tiny.yaml", "--hp", "families=pca"]) == 0
    assert (tmp_path / "job" / "output" / "model.tar.gz").is_file()
    assert (tmp_path / "job" / "input" / "data" / "spec" / "tiny.yaml").is_file()
    assert "model:  " in capsys.readouterr().out


def test_the_candidates_table_names_a_family_left_unfitted():
    out = selection_table({"chosen": "pca", "reason": "pca: validation detection 0.990",
                           "candidates": [{"family": "pca", "validation": {"event_f1": 1.0, "point_f1": 0.98,
                                                                           "false_alarms_per_turbine_day": 0.0},
                                           "calibration": {"threshold": 1.5}}],
                           "skipped": [{"family": "conv1d", "reason": "pca scores 0.990 with no false alarm"}]})
    assert "pca (chosen)" in out and "conv1d (not fitted)" in out
    assert out.endswith("conv1d not fitted: pca scores 0.990 with no false alarm")


def test_fleet_status_shows_what_the_cloud_noticed_of_a_devices_messages(tmp_path, capsys):
    import json

    from nacelle.local.runtime.stack import Stack
    from shared.usecases.intake import record_rejected, track_sequence

    home = tmp_path / "home"
    state = Stack(home).state
    record_rejected(state, "turbine-01", "anomalies", "quota", "over 100 messages/s", 1.0, count=900)
    record_rejected(state, "turbine-01", "health", "schema", "field 'seq' is missing", 2.0)
    for seq in (1, 2, 5):
        track_sequence(state, "turbine-01", "health", seq)
    state.put("devices", "turbine-01", {"thing_name": "turbine-01", "model_version": 9,
                                        "unexpected_version": "turbine-01 reports model v9, which was never "
                                                              "deployed to it"})
    capsys.readouterr()  # the use cases' log lines
    assert main(["--data-dir", str(home), "fleet", "status", "--json"]) == 0
    (row,) = [r for r in json.loads(capsys.readouterr().out) if r["thing"] == "turbine-01"]
    assert row["messages_missing"] == {"health": 2}
    assert row["messages_refused"] == {"quota": 900, "schema": 1}
    assert main(["--data-dir", str(home), "fleet", "status"]) == 0
    assert ("turbine-01: turbine-01 reports model v9, which was never deployed to it; 2 health message(s) missing; "
            "900 refused (quota), 1 refused (schema)") in capsys.readouterr().out


# -- the operator's view: data directory, version, help, human and JSON output ------------------------------
def stack_at(home: Path):
    from nacelle.local.runtime.stack import Stack

    return Stack(home)


def test_a_data_dir_that_is_missing_or_a_file_is_refused_not_created(tmp_path, capsys):
    missing = tmp_path / "typo"
    for command in (["models", "list"], ["fleet", "status", "--json"], ["jobs", "show", "j"], ["data", "status"],
                    ["alerts", "list"], ["events", "dlq"]):
        assert main(["--data-dir", str(missing), *command]) == 2
        assert capsys.readouterr().err == (f"nacelle: no Nacelle data directory at {missing} "
                                           "(start one with `nacelle up`)\n")
    assert not missing.exists()
    (tmp_path / "empty").mkdir()  # a directory that holds no stack is not one either
    assert main(["--data-dir", str(tmp_path / "empty"), "models", "list"]) == 2
    assert list((tmp_path / "empty").iterdir()) == []
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert main(["--data-dir", str(a_file), "models", "list"]) == 2
    assert main(["--data-dir", str(a_file), "data", "put", str(a_file)]) == 2
    assert capsys.readouterr().err.count(f"no Nacelle data directory at {a_file}: it is a file") == 2


def test_data_put_creates_the_data_directory(tmp_path, capsys):
    src = tmp_path / "upload" / "wt-01"
    src.mkdir(parents=True)
    (src / "a.csv").write_text("one")
    home = tmp_path / "new-home"
    assert main(["--data-dir", str(home), "data", "put", str(src)]) == 0
    assert main(["--data-dir", str(home), "models", "list"]) == 0  # now it is a stack's
    assert "1 uploaded" in capsys.readouterr().out


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"nacelle {version('nacelle')}\n"


def test_every_positional_argument_has_help():
    def parsers(parser: argparse.ArgumentParser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    missing = [(p.prog, a.dest) for p in parsers(build_parser()) for a in p._actions
               if not a.option_strings and not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert missing == []


def test_fleet_inject_help_lists_the_simulators_faults(capsys):
    from nacelle.simulator.faults import FAULTS

    with pytest.raises(SystemExit):
        main(["fleet", "inject", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in FAULTS)
    with pytest.raises(SystemExit) as exit_info:
        main(["fleet", "inject", "turbine-01", "no_such_fault"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_versions_are_taken_as_v2_or_2(tmp_path, capsys):
    from nacelle.console import parse_version

    assert parse_version("v2") == parse_version("V2") == parse_version("2") == 2
    home = tmp_path / "home"
    stack = stack_at(home)
    stack.registry.register(stack.settings.group, "jobs/j/output/model.tar.gz", "PendingManualApproval", "ok",
                            {"nacelle:job": "j"}, "j")
    assert main(["--data-dir", str(home), "models", "show", "v1"]) == 0
    assert main(["--data-dir", str(home), "models", "approve", "v1", "--by", "ann"]) == 0
    assert "nacelle-turbine v1 is now Approved" in capsys.readouterr().out
    for bad in ("x1", "v0", "1.5"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--data-dir", str(home), "models", "show", bad])
        assert exit_info.value.code == 2 and "is not a model version (e.g. 2 or v2)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data-dir", str(home), "fleet", "rollback", "--to", "one"])
    assert "is not a model version" in capsys.readouterr().err


def deploy(stack, group: str, version: int, stage: str) -> str:
    """A rollout-owned deployment of `version` to `group`, as shared.usecases.rollout records one."""
    from shared.components import component_version
    from shared.records import DeploymentRecord
    from shared.usecases import state_keys as sk
    from shared.usecases.rollout_state import DEPLOYMENT

    gg = stack.greengrass
    gg.ensure_thing_group(group)
    gg.add_thing(f"{group}-thing", group)
    if gg.get_component("nacelle.model", component_version(version)) is None:
        gg.create_component_version({"RecipeFormatVersion": "2020-01-25", "ComponentName": "nacelle.model",
                                     "ComponentVersion": component_version(version)})
    deployment = gg.create_deployment(gg.thing_group_arn(group), f"v{version}-{stage}",
                                      {"nacelle.model": {"componentVersion": component_version(version)}}, {}, {},
                                      f"{group}-{version}-{stage}")
    stack.state.put(sk.group_pk(stack.settings.group), DEPLOYMENT + deployment,
                    DeploymentRecord(deployment, version, stage).to_item())
    return deployment


def test_models_list_shows_the_champion_and_where_each_version_is_deployed(tmp_path, capsys):
    import json

    home = tmp_path / "home"
    stack = stack_at(home)
    g = stack.settings.group
    for n in (1, 2, 3):
        stack.registry.register(g, f"jobs/j{n}/output/model.tar.gz", "PendingManualApproval", "ok",
                                {"nacelle:job": f"j{n}", "metric:event_f1": f"0.{n}5",
                                 "metric:false_alarms_per_turbine_day": "0.5"}, f"j{n}")
    for n in (1, 2):
        stack.registry.set_status(g, n, "Approved", "ok", "ann")
    deploy(stack, "nacelle-fleet", 1, "fleet")
    deploy(stack, "nacelle-canary", 2, "canary")
    capsys.readouterr()
    assert main(["--data-dir", str(home), "models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[:3] == ["v1", "Approved", "fleet"]
    assert lines[3].split()[:4] == ["v2", "Approved", "(champion)", "canary"]
    assert lines[4].split()[:2] == ["v3", "PendingManualApproval"] and lines[4].split()[2] == "-"
    assert lines[-1].startswith("champion: v2")
    assert main(["--data-dir", str(home), "models", "list", "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [(d["version"], d["champion"], d["deployed"]) for d in docs] == [(1, False, ["fleet"]),
                                                                           (2, True, ["canary"]), (3, False, [])]
    assert docs[0]["metrics"] == {"event_f1": 0.15, "false_alarms_per_turbine_day": 0.5}  # numbers, not strings
    assert docs[0]["created_at"].endswith("Z") and "metric:event_f1" not in docs[0]["metadata"]
    assert docs[0]["arn"].endswith(f"model-package/{g}/1")


def test_fleet_deployments(tmp_path, capsys):
    import json

    home = tmp_path / "home"
    stack = stack_at(home)
    first = deploy(stack, "nacelle-canary", 1, "canary")
    deploy(stack, "nacelle-canary", 2, "canary")  # supersedes the first
    capsys.readouterr()
    assert main(["--data-dir", str(home), "fleet", "deployments"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[1:5] == ["v2", "canary", "nacelle-canary", "ACTIVE"]
    assert lines[3].split()[:5] == [first[:8], "v1", "canary", "nacelle-canary", "INACTIVE"]
    assert main(["--data-dir", str(home), "fleet", "deployments", "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [(d["model_version"], d["stage"], d["target_group"], d["role"]) for d in docs] == [
        (2, "canary", "nacelle-canary", "canary"), (1, "canary", "nacelle-canary", "canary")]
    assert docs[1]["deployment_id"] == first and docs[1]["created_at"].endswith("Z")


def test_fleet_status_fits_100_columns_and_a_stale_device_is_offline_without_a_rate(tmp_path, capsys):
    import json
    import os
    import time

    from nacelle.local.edge.nucleus import process_start_time

    home = tmp_path / "home"
    state = stack_at(home).state
    now = time.time()
    for thing, age_s in (("turbine-01", 1000.0), ("turbine-02", 2.0), ("turbine-03", 3.0)):
        state.put("devices", thing, {"thing_name": thing, "model_version": 2, "inference_rate_hz": 2.0,
                                     "last_health_at": now - age_s})
    me = {"pid": os.getpid(), "start": process_start_time(os.getpid())}  # a live process stands in for nuclei
    (home / "fleet.json").write_text(json.dumps({"turbine-01/nucleus": me, "turbine-02/nucleus": me,
                                                 "turbine-02/simulator": me}))
    capsys.readouterr()
    assert main(["--data-dir", str(home), "fleet", "status"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("turbine-")
            and "  " in line}
    assert rows["turbine-01"][3] == "-" and "OFFLINE" in rows["turbine-01"]  # stale: no rate
    assert rows["turbine-02"][3] == "2.000" and "ONLINE" in rows["turbine-02"]
    assert rows["turbine-03"][3] == "-" and "STOPPED" in rows["turbine-03"]  # its nucleus does not run
    assert "turbine-03: nucleus stopped; simulator stopped" in out
    assert main(["--data-dir", str(home), "fleet", "status", "--json"]) == 0
    doc = {r["thing"]: r for r in json.loads(capsys.readouterr().out)}
    assert doc["turbine-01"]["state"] == "OFFLINE" and doc["turbine-02"]["state"] == "ONLINE"
    assert doc["turbine-01"]["last_health_at"].endswith("Z")  # ISO 8601 UTC, not epoch seconds


def test_jobs_show_is_readable_and_its_json_is_json(tmp_path, capsys):
    import json

    home = tmp_path / "home"
    stack = stack_at(home)
    job_dir = stack.paths.jobs_dir / "nacelle-abc-1"
    stack.jobs.create("nacelle-abc-1", "training", {"dataset_manifest_key": "datasets/g/abc.json",
                                                     "hyperparameters": {"threads": "1"}}, job_dir)
    job_dir.mkdir(parents=True)
    (job_dir / "runner.log").write_text("conv1d split 1/2: 900 train, 100 held-out normal windows\n"
                                        "epoch 10/35 train_loss=0.27845; val_loss=0.29144; 1.10s\n")
    assert main(["--data-dir", str(home), "jobs", "show", "nacelle-abc-1"]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "status       InProgress" in out
    assert "progress     conv1d split 1/2: epoch 10/35, loss 0.2784 (validation 0.2914)" in out
    assert "hyperparameters        threads=1" in out
    assert main(["--data-dir", str(home), "jobs", "show", "nacelle-abc-1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["name"] == "nacelle-abc-1" and doc["created_at"].endswith("Z") and doc["ended_at"] is None


def test_jobs_logs_follow_prints_progress_until_the_job_ends(tmp_path, capsys):
    import threading
    import time

    home = tmp_path / "home"
    stack = stack_at(home)
    job_dir = stack.paths.jobs_dir / "j"
    job_dir.mkdir(parents=True)
    stack.jobs.create("j", "training", {}, job_dir)

    def train() -> None:
        with (job_dir / "runner.log").open("a") as log:
            for k in (1, 2, 3):
                log.write(f"epoch {k}/3 train_loss=0.{4 - k}; val_loss=0.5; 1.0s\n")
                log.flush()
                time.sleep(0.2)
        stack.jobs.finish("j", "Completed")

    worker = threading.Thread(target=train)
    worker.start()
    try:
        assert main(["--data-dir", str(home), "jobs", "logs", "j", "--follow", "--progress"]) == 0
    finally:
        worker.join()
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["epoch 1/3, loss 0.3 (validation 0.5)", "epoch 2/3, loss 0.2 (validation 0.5)",
                                         "epoch 3/3, loss 0.1 (validation 0.5)"]
    assert captured.err.strip().endswith("job j: Completed")


def test_alerts_show_reads_as_the_operator_got_it(tmp_path, capsys):
    import json
    import time

    from shared.messages import EpisodeRow, validate
    from shared.usecases.alerts import acknowledge, on_anomaly

    home = tmp_path / "home"
    deps = stack_at(home).alert_deps()
    now = time.time()
    row = {"v": 2, "kind": "open", "episode_id": "turbine-02-1", "turbine_id": "turbine-02", "features": ["rps"],
           "score": 3.2,
           "contributions": {"rps": 0.7, "voltage": 0.25, "yaw": 0.05}, "missing": [], "started_at": now - 60,
           "opened_at": now - 50, "last_flagged_at": now - 40, "ended_at": None, "model_version": 1, "seq": 1,
           "thing_name": "turbine-02", "received_at": int(now * 1000), "client_id": "turbine-02"}
    on_anomaly(validate(EpisodeRow, row), deps)
    acknowledge("episode:turbine-02:turbine-02-1", "bob", deps, verdict="fault", note="bearing noise")
    capsys.readouterr()
    assert main(["--data-dir", str(home), "alerts", "show", "episode:turbine-02:turbine-02-1"]) == 0
    out = capsys.readouterr().out
    for wanted in ("turbine       turbine-02", "severity      high", "status        open",
                   "top features  rps (70 %), voltage (25 %), yaw (5 %)", "notifications:",
                   "    [HIGH] turbine-02: score 3.2x threshold",
                   "    | Turbine turbine-02: anomaly episode turbine-02-1",
                   "acknowledgements:", "bob, verdict fault"):
        assert wanted in out
    assert "bearing noise" in out and "first_seen_at" not in out and "rev" not in out.split()
    started = next(line for line in out.splitlines() if line.startswith("started"))
    assert started.split()[1].endswith("Z") and "T" in started.split()[1]
    assert main(["--data-dir", str(home), "alerts", "show", "episode:turbine-02:turbine-02-1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["started_at"].endswith("Z") and doc["first_seen_at"].endswith("Z")  # never epoch numbers
    assert doc["notifications"][0]["kind"] == "alert" and doc["notifications"][0]["message"].startswith("Turbine")
    assert doc["acks"][0]["verdict"] == "fault" and "pk" not in doc


def test_alerts_show_links_an_episode_carried_on_after_a_model_change(tmp_path, capsys):
    import time

    from shared.messages import EpisodeRow, validate
    from shared.usecases.alerts import on_anomaly

    home = tmp_path / "home"
    deps = stack_at(home).alert_deps()
    now = time.time()

    def row(kind: str, episode: str, started: float, seq: int) -> EpisodeRow:
        return validate(EpisodeRow, {
            "v": 2, "kind": kind, "episode_id": episode, "turbine_id": "turbine-02", "features": ["rps"], "score": 3.2,
            "contributions": {"rps": 1.0}, "missing": [], "started_at": started, "opened_at": started + 5,
            "last_flagged_at": started + 10, "ended_at": None, "model_version": 1, "seq": seq,
            "thing_name": "turbine-02", "received_at": int(now * 1000), "client_id": "turbine-02"})

    on_anomaly(row("open", "turbine-02-1", now - 60, 1), deps)
    on_anomaly(row("interrupt", "turbine-02-1", now - 60, 2), deps)  # the model changed while the condition went on
    on_anomaly(row("open", "turbine-02-2", now - 20, 1), deps)
    capsys.readouterr()
    assert main(["--data-dir", str(home), "alerts", "show", "episode:turbine-02:turbine-02-2"]) == 0
    out = capsys.readouterr().out
    assert "notified in   episode:turbine-02:turbine-02-1 (this episode carries that interrupted one on)" in out
    assert "  alert continued" in out and "[HIGH]" not in out  # no alert of its own
    assert main(["--data-dir", str(home), "alerts", "show", "episode:turbine-02:turbine-02-1"]) == 0
    assert "carried on by episode turbine-02-2" in capsys.readouterr().out


def test_data_status_reads_the_retraining_policy(tmp_path, capsys):
    import json

    from nacelle.simulator.generate import generate_dataset
    from shared.usecases.retraining import on_object_created

    home = tmp_path / "home"
    stack = stack_at(home)
    result = generate_dataset(tmp_path / "gen", 1, 0.25, "none", 3)
    path = result.files[0]
    key = f"raw/{path.parent.name}/{path.name}"
    stack.store.put(key, path.read_bytes())
    assert on_object_created(key, stack.arrival_deps()).action == "accepted"
    capsys.readouterr()
    assert main(["--data-dir", str(home), "data", "status"]) == 0
    out = capsys.readouterr().out
    assert "new data       0.25 of the 1 turbine-hours that start a training, in 1 file(s)" in out
    assert "s of the 15 s quiet period left" in out
    assert "retraining     waits: debounced" in out
    assert main(["--data-dir", str(home), "data", "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["new_turbine_hours"] == pytest.approx(0.25, abs=0.01) and doc["would_start"] is False
    assert doc["last_arrival_at"].endswith("Z") and doc["min_new_turbine_hours"] == 1.0


def test_json_piped_into_a_reader_that_leaves_exits_quietly(tmp_path):
    import subprocess
    import sys

    home = tmp_path / "home"
    stack = stack_at(home)
    for n in range(1, 30):
        stack.registry.register(stack.settings.group, f"jobs/j{n}/m.tar.gz", "PendingManualApproval", "ok", {}, f"j{n}")
    proc = subprocess.Popen([sys.executable, "-m", "nacelle.cli", "--data-dir", str(home), "models", "list", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head` that has read all it wanted, before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == ""


def test_sigterm_unwinds_a_command_as_ctrl_c_does(monkeypatch):
    """A demo or stack killed with SIGTERM (a CI timeout, `kill`) runs the same cleanup as Ctrl-C: nothing left."""
    cleaned = []

    def command(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # interrupted by the handler
            return 0
        finally:
            cleaned.append(True)

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=command)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    assert main([]) == 130 and cleaned == [True] and time.monotonic() - started < 5
    assert signal.getsignal(signal.SIGTERM) is before


def test_data_put_says_which_turbines_the_stack_reads(tmp_path, capsys):
    flat = tmp_path / "flat"  # two turbines' files in one folder: the stack reads the folder as their turbine
    flat.mkdir()
    for name in ("wt01_a.csv", "wt02_a.csv"):
        (flat / name).write_text("x\n")
    (tmp_path / "wt03").mkdir()
    (tmp_path / "wt03" / "jan.csv").write_text("x\n")
    home = str(tmp_path / "home")
    assert main(["--data-dir", home, "spec", "put", str(write_spec(tmp_path / "plant.yaml"))]) == 0  # no id column
    assert main(["--data-dir", home, "data", "put", str(flat), str(tmp_path / "wt03")]) == 0
    out = capsys.readouterr().out
    assert "the stack reads each file's turbine from its folder: flat (2 files), wt03 (1 file)" in out
