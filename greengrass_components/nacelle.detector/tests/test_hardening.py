"""Models the detector must refuse at load (a NaN score, a batch axis fixed at 1, a graph that never finishes) and
model versions that must not become paths. Each refusal is a model_error; the current model keeps scoring."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from detector import scoring
from detector.app import DetectorApp, load_within
from detector.config import DetectorConfig, FileConfigSource
from detector.messages import sensor_message
from detector.scoring import EdgeModel
from detector.spool import Spool
from onnx import TensorProto, helper

from shared.errors import BundleError, ConfigurationError
from shared.ml.edge_bundle import sha256_file
from tests.unit.test_model_io import SPEC, manifest_for, quiet, windows

THING = "wt-1"


class FakeTransport:
    """In-memory Transport, always connected: `deliver` plays the broker, `sent` records what was published."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.subscriptions: dict[str, Callable[[bytes], None]] = {}
        self.is_connected = True

    def connect(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        self.subscriptions[topic] = callback

    def on_connection_change(self, callback: Callable[[bool], None]) -> None:
        pass

    def publish(self, topic: str, payload: bytes, timeout: float) -> None:
        self.sent.append((topic, payload))

    def deliver(self, payload: bytes) -> None:
        self.subscriptions[f"turbines/{THING}/sensors"](payload)

    def health(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.sent if t == f"turbines/{THING}/health"]


def write_config(path: Path, version: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"model": {"version": version}, "healthIntervalSeconds": 3600}))
    tmp.replace(path)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- bundles -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small PCA model on three features, compiled like any other (a few seconds)."""
    from training_jobs.bundle_io import pack_model_dir, save_model_dir
    from training_jobs.compile import compile_bundle
    from training_jobs.fit import fit_pca
    from training_jobs.hyperparameters import Hyperparameters

    root = tmp_path_factory.mktemp("tiny")
    fitted = fit_pca(SPEC, windows(300, 1), Hyperparameters(epochs=2, seed=3), quiet)
    save_model_dir(root / "model", fitted.scorer, manifest_for(fitted.scorer))
    archive = pack_model_dir(root / "model", root / "model.tar.gz")
    compile_bundle(archive, root / "edge", None, 1, warmup=2, runs=5)
    return root / "edge"


def rebundle(src: Path, dest: Path, model: onnx.ModelProto | None = None, model_version: int = 1) -> Path:
    """A copy of `src` with another graph (or the same) whose manifest lists its digest and size: it verifies."""
    dest.mkdir(parents=True)
    if model is None:
        shutil.copy(src / "model.onnx", dest / "model.onnx")
    else:
        onnx.save(model, str(dest / "model.onnx"))
    raw = json.loads((src / "manifest.json").read_text())
    raw["model_version"] = model_version
    raw["edge"]["artifacts"]["model.onnx"] = {"sha256": sha256_file(dest / "model.onnx"),
                                              "size": (dest / "model.onnx").stat().st_size}
    (dest / "manifest.json").write_text(json.dumps(raw))
    return dest


def _graph(bundle: Path) -> onnx.ModelProto:
    return onnx.load(str(bundle / "model.onnx"))


def _before_input(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto],
                  produced: str) -> onnx.ModelProto:
    """`nodes` read the graph input and produce `produced`, which the original nodes read instead of it."""
    graph, name = model.graph, model.graph.input[0].name
    for node in graph.node:
        node.input[:] = [produced if i == name else i for i in node.input]
    graph.initializer.extend(inits)
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *original])
    return model


def nan_score(bundle: Path) -> onnx.ModelProto:
    """The score times NaN: what a diverged training or corrupted weights produce."""
    model = _graph(bundle)
    for node in model.graph.node:
        node.output[:] = ["score_raw" if o == "score" else o for o in node.output]
    model.graph.initializer.append(helper.make_tensor("nan_", TensorProto.FLOAT, [], [float("nan")]))
    model.graph.node.append(helper.make_node("Mul", ["score_raw", "nan_"], ["score"]))
    return model


def fixed_batch(bundle: Path) -> onnx.ModelProto:
    """The batch axis declared as 1 on every input and output."""
    model = _graph(bundle)
    for value in (*model.graph.input, *model.graph.output):
        axis = value.type.tensor_type.shape.dim[0]
        axis.ClearField("dim_param")
        axis.dim_value = 1
    return model


def first_window_only(bundle: Path) -> onnx.ModelProto:
    """Scores only the first window of a batch, through a slice whose end is computed from the data, so the
    declared shapes cannot tell: only a run of several windows shows it."""
    nodes = [helper.make_node("ReduceSum", ["windows"], ["total"], keepdims=0),
             helper.make_node("Mul", ["total", "zero_f"], ["nothing"]),
             helper.make_node("Add", ["nothing", "one_f"], ["one"]),
             helper.make_node("Cast", ["one"], ["one_i"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["one_i", "one_axis"], ["end"]),
             helper.make_node("Slice", ["windows", "start", "end", "batch_axis"], ["x1"])]
    inits = [helper.make_tensor("zero_f", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("one_f", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("one_axis", TensorProto.INT64, [1], [1]),
             helper.make_tensor("start", TensorProto.INT64, [1], [0]),
             helper.make_tensor("batch_axis", TensorProto.INT64, [1], [0])]
    return _before_input(_graph(bundle), nodes, inits, "x1")


def hanging(bundle: Path, trips: int = 10**15) -> onnx.ModelProto:
    """The same graph behind a Loop of `trips` empty iterations: a run that does not end in any useful time."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])])
    nodes = [helper.make_node("Loop", ["trips", "true_", "zero_f"], ["v_final"], body=body),
             helper.make_node("Mul", ["v_final", "zero_f"], ["z"]),
             helper.make_node("Add", ["windows", "z"], ["x1"])]
    inits = [helper.make_tensor("trips", TensorProto.INT64, [], [trips]),
             helper.make_tensor("true_", TensorProto.BOOL, [], [True]),
             helper.make_tensor("zero_f", TensorProto.FLOAT, [], [0.0])]
    return _before_input(_graph(bundle), nodes, inits, "x1")


BAD_GRAPHS: dict[str, tuple[Callable[[Path], onnx.ModelProto], str]] = {
    "nan_score": (nan_score, "finite"),
    "fixed_batch": (fixed_batch, "dynamic batch axis"),
    "first_window_only": (first_window_only, "returned shapes"),
}


# -- scoring: what warm-up refuses ---------------------------------------------------------------------------
def test_a_rebuilt_bundle_with_the_same_graph_loads(good_bundle: Path, tmp_path: Path) -> None:
    model = EdgeModel.load(rebundle(good_bundle, tmp_path / "b"))
    score, _, _ = model.score(windows(3, 4))
    assert score.shape == (3,) and np.isfinite(score).all()


@pytest.mark.parametrize("case", sorted(BAD_GRAPHS))
def test_load_refuses_a_graph_that_cannot_score_real_windows(good_bundle: Path, tmp_path: Path, case: str) -> None:
    build, reason = BAD_GRAPHS[case]
    bundle = rebundle(good_bundle, tmp_path / case, build(good_bundle))
    with pytest.raises(BundleError, match=reason):
        EdgeModel.load(bundle)


def test_warm_up_stops_a_graph_that_never_finishes(good_bundle: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring, "LOAD_TIMEOUT_S", 0.5)
    bundle = rebundle(good_bundle, tmp_path / "hang", hanging(good_bundle))
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            EdgeModel.load(bundle)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the warm-up run was not stopped"
    [error] = outcome
    assert isinstance(error, BundleError) and "took more than 0.5 s" in str(error)


# -- the app: a refused model is a model_error, a hanging load does not block the next ----------------------------
@pytest.fixture(scope="module")
def models_root(good_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.0.0 and 3.0.0 sound; 2.0.0 the one a test's loader makes hang; 4.0.0-6.0.0 the graphs warm-up refuses."""
    root = tmp_path_factory.mktemp("artifacts-unarchived")
    bad = dict(zip(("4.0.0", "5.0.0", "6.0.0"), sorted(BAD_GRAPHS), strict=True))
    for version in ("1.0.0", "2.0.0", "3.0.0", *bad):
        graph = BAD_GRAPHS[bad[version]][0](good_bundle) if version in bad else None
        rebundle(good_bundle, root / "nacelle.model" / version / "bundle", graph, int(version[0]))
    return root


def messages(count: int, per: int = 10) -> list[bytes]:
    rng = np.random.default_rng(0)
    start, out = time.time() - 3600, []
    for k in range(count):
        rows = []
        for i in range(k * per, (k + 1) * per):
            base = float(rng.normal())
            rows.append({"seq": i, "ts": start + i, "a": base, "b": 2 * base, "c": 50.0 + 0.01 * i})
        out.append(sensor_message(THING, rows))
    return out


@pytest.fixture
def hang() -> Iterator[threading.Event]:
    """Holds every load of 2.0.0 until the test ends (then the abandoned load returns and its thread ends)."""
    release = threading.Event()
    yield release
    release.set()


@pytest.fixture
def make_app(tmp_path: Path, models_root: Path,
             hang: threading.Event) -> Iterator[Callable[[str], tuple[DetectorApp, FakeTransport, Path]]]:
    apps: list[DetectorApp] = []

    def loader(path: Path) -> EdgeModel:
        if path.parent.name == "2.0.0":
            hang.wait()
        return EdgeModel.load(path)

    def make(version: str) -> tuple[DetectorApp, FakeTransport, Path]:
        config = tmp_path / f"config-{len(apps)}.json"
        write_config(config, version)
        source = FileConfigSource(config, THING, poll_s=0.05)
        source.start()
        transport = FakeTransport()
        app = DetectorApp(source, transport, Spool(tmp_path / f"spool-{len(apps)}.db", 1000), models_root,
                          loader=loader, version="test", publish_timeout=0.5, load_timeout=0.5)
        apps.append(app)
        app.start()
        return app, transport, config

    yield make
    for app in apps:
        app.stop(drain_s=0)
        app.spool.close()


@pytest.mark.parametrize("version", ["4.0.0", "5.0.0", "6.0.0"])
def test_a_model_warm_up_refuses_is_a_model_error_and_the_current_one_keeps_scoring(make_app, version: str) -> None:
    app, transport, config = make_app("1.0.0")
    feed = messages(12)
    write_config(config, version)
    wait_for(lambda: app.model_error is not None, what="the refusal")
    assert version in app.model_error and app.pipeline is not None and app.pipeline.model_version == 1
    for payload in feed:
        transport.deliver(payload)
    wait_for(lambda: app._queue.empty() and app.windows_scored > 0, what="scoring")
    app.request_health()
    wait_for(lambda: bool(transport.health()) and transport.health()[-1]["model_error"] is not None, what="health")
    assert app.bad_messages == 0 and transport.health()[-1]["model_version"] == 1


def test_a_hanging_load_is_abandoned_and_the_next_version_loads(make_app) -> None:
    app, transport, config = make_app("1.0.0")
    write_config(config, "2.0.0")
    wait_for(lambda: app.model_error is not None, timeout=10, what="the load deadline")
    assert "2.0.0" in app.model_error and "took more than 0.5 s" in app.model_error
    assert app.pipeline is not None and app.pipeline.model_version == 1
    write_config(config, "3.0.0")
    for payload in messages(3):
        transport.deliver(payload)
    wait_for(lambda: app.pipeline is not None and app.pipeline.model_version == 3, timeout=10, what="3.0.0")
    assert app.model_error is None


def test_a_start_with_a_hanging_model_still_runs_and_reports_it(make_app) -> None:
    started = time.monotonic()
    app, transport, _ = make_app("2.0.0")
    assert time.monotonic() - started < 10 and app.pipeline is None
    wait_for(lambda: bool(transport.health()), timeout=10, what="the health the failure asks for")
    assert "took more than 0.5 s" in transport.health()[-1]["model_error"]
    for payload in messages(2):
        transport.deliver(payload)
    wait_for(lambda: app.unscored_messages == 2, what="the worker")


def test_an_abandoned_load_cannot_change_anything_when_it_ends() -> None:
    release, ended = threading.Event(), threading.Event()

    def slow() -> str:
        release.wait()
        ended.set()
        return "late"

    with pytest.raises(BundleError, match=r"took more than 0\.1 s"):
        load_within(0.1, slow, "slow")
    release.set()
    assert ended.wait(5)
    assert load_within(5, lambda: "fast", "fast") == "fast"
    with pytest.raises(MemoryError):
        load_within(5, lambda: (_ for _ in ()).throw(MemoryError()), "oom")


# -- configuration: model.version is a directory name ---------------------------------------------------------
@pytest.mark.parametrize("version", ["..", " ..", "\t..", " .hidden", ".", "a/b", "7", "7.0", "7.0.0/..", 7])
def test_model_version_is_checked_after_stripping(version: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"model\.version"):
        DetectorConfig.from_dict({"model": {"version": version}}, THING)


@pytest.mark.parametrize(("raw", "version"), [("", ""), (" ", ""), (" 7.0.0\n", "7.0.0"),
                                              ("1.2.3-rc.1+b7", "1.2.3-rc.1+b7")])
def test_model_version_accepts_component_versions(raw: str, version: str) -> None:
    config = DetectorConfig.from_dict({"model": {"version": raw}}, THING)
    assert config.model_version == version
    if version:
        assert config.model_dir(Path("/r")) == Path("/r/nacelle.model") / version / "bundle"
