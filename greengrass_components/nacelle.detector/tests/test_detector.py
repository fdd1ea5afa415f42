"""Detector core: parity with `nacelle evaluate`, bad messages, hot swap."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from detector.messages import MAX_AHEAD_S, BadMessage, MessageBuilder, parse_sensor_message, sensor_message
from detector.pipeline import Result, TurbinePipeline, WindowRecord
from detector.scoring import EdgeModel

from shared.errors import BundleError
from shared.ml.dataset import data_files, load_dataset
from shared.ml.episodes import EpisodeEvent
from shared.ml.validation import load_file

BATCH = 20


@dataclass
class Stream:
    turbine_id: str
    t: np.ndarray
    rows: list[dict[str, Any]]  # one sensor sample per row: seq, ts and the raw input columns

    def messages(self, batch: int = BATCH) -> Iterator[bytes]:
        for i in range(0, len(self.rows), batch):
            yield sensor_message(self.turbine_id, self.rows[i:i + batch])


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, trained_model) -> dict[int, Path]:
    from training_jobs.compile import compile_bundle

    root = tmp_path_factory.mktemp("edge")
    out = {}
    for version in (1, 2):
        out[version] = root / f"v{version}"
        compile_bundle(trained_model.model_archive, out[version], None, version, warmup=5, runs=20)
    return out


@pytest.fixture(scope="session")
def pca_bundle(tmp_path_factory: pytest.TempPathFactory, trained_pca) -> Path:
    from training_jobs.compile import compile_bundle

    out = tmp_path_factory.mktemp("edge-pca") / "v1"
    compile_bundle(trained_pca.model_archive, out, None, 1, warmup=5, runs=20)
    return out


@pytest.fixture(scope="session")
def model_v1(bundles) -> EdgeModel:
    return EdgeModel.load(bundles[1])


@pytest.fixture(scope="session")
def streams(small_dataset: Path, model_v1: EdgeModel) -> dict[str, Stream]:
    spec = model_v1.spec
    parts: dict[str, list] = {}
    for path in data_files(small_dataset):
        hint = path.parent.name if path.parent != small_dataset else None
        for frame in load_file(path, spec, turbine_hint=hint)[0]:
            parts.setdefault(frame.turbine_id, []).append(frame)
    out = {}
    for turbine, frames in sorted(parts.items()):
        frames.sort(key=lambda f: float(f.t[0]))
        t = np.concatenate([f.t for f in frames])
        values = {c: np.concatenate([f.values[c] for f in frames]) for c in spec.input_columns}
        rows = [{"seq": i, "ts": float(t[i]), **{c: float(values[c][i]) for c in spec.input_columns}}
                for i in range(len(t))]
        out[turbine] = Stream(turbine, t, rows)
    return out


def evaluator(archive: Path, data: Path) -> tuple[dict[str, Any], dict[str, list]]:
    """What `nacelle evaluate` computes: torch scores of series_windows, then run_episodes."""
    from training_jobs.evaluation import evaluate_model_on

    _, scored, episodes, _, _ = evaluate_model_on(archive, data)
    return ({s.turbine_id: s for s in scored},
            {s.turbine_id: [e for e in episodes if e.turbine_id == s.turbine_id] for s in scored})


@pytest.fixture(scope="session")
def reference(trained_model, small_dataset: Path, model_v1: EdgeModel):
    return evaluator(trained_model.model_archive, small_dataset)


@pytest.fixture(scope="session")
def pca_reference(trained_pca, small_dataset: Path):
    return evaluator(trained_pca.model_archive, small_dataset)


def run_stream(pipeline: TurbinePipeline, stream: Stream, swap_at: int | None = None,
               new_model: EdgeModel | None = None) -> tuple[list[WindowRecord], list[EpisodeEvent], list[int | None]]:
    windows: list[WindowRecord] = []
    events: list[EpisodeEvent] = []
    versions: list[int | None] = []
    for i, payload in enumerate(stream.messages()):
        if i == swap_at:
            assert new_model is not None
            swapped = pipeline.swap(new_model)
            assert swapped.model_version == (pipeline.model_version or 0) - 1
            events += swapped.events
        result: Result = pipeline.handle(payload)
        windows += result.windows
        events += result.events
        versions.append(result.model_version)
    events += pipeline.flush().events
    return windows, events, versions


# -- parity --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["conv1d", "pca"])
def test_parity_with_the_evaluator(family: str, request: pytest.FixtureRequest, small_dataset: Path, streams,
                                   record_property) -> None:
    if family == "pca":
        edge = EdgeModel.load(request.getfixturevalue("pca_bundle"))
        scored, episodes = request.getfixturevalue("pca_reference")
    else:
        edge = request.getfixturevalue("model_v1")
        scored, episodes = request.getfixturevalue("reference")
    assert edge.manifest.bundle.family == family
    assert set(scored) == set(streams)
    worst, latencies, opened_total = 0.0, [], 0
    for tid, stream in streams.items():
        ref = scored[tid]
        np.testing.assert_array_equal(stream.t, scored[tid].t)  # the raw rows are the evaluator's samples
        pipeline = TurbinePipeline(tid, edge)
        windows, events, _ = run_stream(pipeline, stream)
        assert len(windows) == len(ref.t_end) > 0  # every window, none extra
        assert pipeline.windows_scored == len(ref.t_end)
        np.testing.assert_array_equal([w.t_end for w in windows], ref.t_end)
        np.testing.assert_array_equal([w.operating for w in windows], ref.operating)
        scores = np.array([w.score for w in windows])
        contributions = np.stack([w.contributions for w in windows])
        missing = np.stack([w.missing for w in windows])
        worst = max(worst, float(np.abs(scores - ref.scores).max() / edge.threshold),
                    float(np.abs(missing - ref.missing).max()))
        np.testing.assert_allclose(scores, ref.scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(contributions, ref.contributions, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(missing, ref.missing, rtol=0, atol=1e-6)
        opened = [(e.episode["episode_id"], e.episode["opened_at"]) for e in events if e.kind == "open"]
        closed = [(e.episode["episode_id"], e.episode["closed_at"]) for e in events if e.kind == "close"]
        assert opened == [(ep.episode_id, ep.opened_at) for ep in episodes[tid]]
        assert closed == [(ep.episode_id, ep.closed_at) for ep in episodes[tid]]
        spans = [(e.episode["started_at"], e.episode["last_flagged_at"], e.episode["flagged_windows"],
                  e.episode["features"]) for e in events if e.kind == "close"]
        assert spans == [(ep.started_at, ep.last_flagged_at, ep.flagged_windows, ep.features) for ep in episodes[tid]]
        opened_total += len(opened)
        latencies += [w.latency_s for w in windows]
    assert opened_total > 0  # the labelled faults give the comparison something to compare
    ms = np.asarray(latencies) * 1000
    record_property("max_abs_diff", worst)
    record_property("latency_p50_ms", float(np.percentile(ms, 50)))
    record_property("latency_p99_ms", float(np.percentile(ms, 99)))
    print(f"\nparity max abs diff {worst:.3g}; per-window latency p50 {np.percentile(ms, 50):.3f} ms, "
          f"p99 {np.percentile(ms, 99):.3f} ms over {len(ms)} windows; {opened_total} episodes identical")


def test_turbine_levels_are_subtracted_on_the_device_as_in_the_evaluator(
        tmp_path: Path, trained_pca, pca_reference, small_dataset: Path, streams) -> None:
    """A model with per-turbine offsets (shared.ml.levels): the detector subtracts its own turbine's as `nacelle
    evaluate` does (the same windows and episodes), its drift statistics summarise the same values, and a turbine
    the model never saw is scored at its own level."""
    from detector.stats import PeriodStats

    from training_jobs.bundle_io import extract_tar, pack_model_dir
    from training_jobs.compile import compile_bundle

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    extract_tar(trained_pca.model_archive, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    features = manifest["feature_spec"]["features"]
    first, second = sorted(streams)
    shifted = [0.0] * len(features)
    shifted[features.index("voltage")] = 4.0
    shifted[features.index("rps")] = -0.25
    manifest["normalisation"]["turbine_offsets"] = {first: shifted, "wt-elsewhere": [1.0] * len(features)}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    archive = pack_model_dir(model_dir, tmp_path / "model.tar.gz")
    compile_bundle(archive, tmp_path / "edge", None, 1, warmup=1, runs=2)
    edge = EdgeModel.load(tmp_path / "edge")
    scored, episodes = evaluator(archive, small_dataset)
    plain, _ = pca_reference
    assert not np.array_equal(scored[first].scores, plain[first].scores)  # the offsets change the first turbine
    np.testing.assert_array_equal(scored[second].scores, plain[second].scores)  # and only it
    for tid in (first, second):
        pipeline = TurbinePipeline(tid, edge)
        leveled, unleveled = PeriodStats(tid, 1e9), PeriodStats(tid, 1e9)
        windows: list[WindowRecord] = []
        events: list[EpisodeEvent] = []
        for payload in streams[tid].messages():
            result = pipeline.handle(payload)
            windows += result.windows
            events += result.events
            leveled.observe(result, edge.spec, pipeline.levels)
            unleveled.observe(result, edge.spec)
        events += pipeline.flush().events
        np.testing.assert_array_equal([w.t_end for w in windows], scored[tid].t_end)
        np.testing.assert_allclose([w.score for w in windows], scored[tid].scores, rtol=1e-4, atol=1e-5)
        opened = [(e.episode["episode_id"], e.episode["opened_at"]) for e in events if e.kind == "open"]
        assert opened == [(ep.episode_id, ep.opened_at) for ep in episodes[tid]]
        (period,), (raw_period,) = leveled.flush(), unleveled.flush()
        shift = raw_period["mean"]["voltage"] - period["mean"]["voltage"]  # the baseline summarises offset values
        assert shift == pytest.approx(4.0 if tid == first else 0.0, abs=1e-3)
    assert TurbinePipeline(first, edge).levels is not None and TurbinePipeline(second, edge).levels is None


def test_batch_size_does_not_change_windows(model_v1: EdgeModel, streams) -> None:
    stream = next(iter(streams.values()))
    short = Stream(stream.turbine_id, stream.t[:3000], stream.rows[:3000])
    ends, errors = [], []
    for batch in (1, 7, 500, 1200):  # 500 and 1200 outgrow the ring; 1 and 7 wrap it many times
        pipeline = TurbinePipeline(short.turbine_id, model_v1)
        windows = [w for p in short.messages(batch) for w in pipeline.handle(p).windows]
        ends.append([w.t_end for w in windows])
        errors.append(np.array([w.score for w in windows]))
    assert ends[0] == ends[1] == ends[2] == ends[3] and len(ends[0]) > 0
    for other in errors[1:]:  # same window contents, whatever the batching (ORT batches may differ by ulps)
        np.testing.assert_allclose(other, errors[0], rtol=0, atol=1e-6)


def test_handle_samples_matches_handle(model_v1: EdgeModel, streams) -> None:
    stream = next(iter(streams.values()))
    spec = model_v1.spec
    by_bytes, by_samples = TurbinePipeline(stream.turbine_id, model_v1), TurbinePipeline(stream.turbine_id, model_v1)
    payloads = list(stream.messages())[:40]
    a = [w.t_end for p in payloads for w in by_bytes.handle(p).windows]
    b = [w.t_end for p in payloads
         for w in by_samples.handle_samples(parse_sensor_message(p, spec, stream.turbine_id)).windows]
    assert a == b and a
    assert by_bytes.snapshot() == by_samples.snapshot()
    # unordered samples from a caller: each one older than the newest seen is dropped, as before
    older = parse_sensor_message(payloads[10], spec, stream.turbine_id)
    assert by_samples.handle_samples(older[::-1]).stale == len(older)


def test_a_partly_redelivered_message_scores_only_its_new_samples(model_v1: EdgeModel, streams) -> None:
    """Each message repeats the last 15 samples of the one before (a publisher resending a tail): those are
    dropped, and the windows, scores and episodes are the ones of the stream sent once."""
    stream = next(iter(streams.values()))
    rows, tid = stream.rows[:600], stream.turbine_id
    once, overlapped = TurbinePipeline(tid, model_v1), TurbinePipeline(tid, model_v1)
    a = [once.handle(sensor_message(tid, rows[i:i + BATCH])) for i in range(0, len(rows), BATCH)]
    b = [overlapped.handle(sensor_message(tid, rows[max(0, i - 15):i + BATCH])) for i in range(0, len(rows), BATCH)]
    assert [r.stale for r in b] == [0] + [15] * (len(b) - 1) and all(r.accepted == BATCH for r in b)
    assert [(w.t_end, w.score) for r in b for w in r.windows] == [(w.t_end, w.score) for r in a for w in r.windows]
    taken = [[r.batch.ts.tolist() if r.batch is not None else None for r in results] for results in (a, b)]
    assert taken[0] == taken[1]  # the samples taken in, only
    assert overlapped.snapshot()[2:] == once.snapshot()[2:] and overlapped.windows_scored == once.windows_scored > 0


def test_redelivered_samples_are_dropped(model_v1: EdgeModel, streams) -> None:
    stream = next(iter(streams.values()))
    pipeline = TurbinePipeline(stream.turbine_id, model_v1)
    payloads = list(stream.messages())[:20]
    first = [pipeline.handle(p) for p in payloads[:10]]
    again = pipeline.handle(payloads[9])  # QoS 1 redelivery
    assert again.stale == BATCH and again.accepted == 0 and not again.windows
    rest = [pipeline.handle(p) for p in payloads[10:]]
    ends = [w.t_end for r in first + rest for w in r.windows]
    assert ends == sorted(set(ends))


def test_a_sample_time_far_ahead_of_the_device_clock_is_refused_not_waited_for(model_v1: EdgeModel, streams) -> None:
    """One glitched timestamp years ahead would make every later sample look redelivered: it is a bad message
    (up to MAX_AHEAD_S ahead of the device's clock is taken), and the stream goes on being scored."""
    stream = next(iter(streams.values()))
    payloads = list(stream.messages())[:40]
    now = stream.rows[0]["ts"]
    pipeline = TurbinePipeline(stream.turbine_id, model_v1, clock=lambda: now)
    for p in payloads[:10]:
        pipeline.handle(p)
    glitch = json.loads(payloads[10])
    glitch["samples"][-1]["ts"] += 10 * 365 * 86400.0
    with pytest.raises(BadMessage, match=re.escape(f"- at `$.samples[{BATCH - 1}].ts`")):
        pipeline.handle(json.dumps(glitch).encode())
    rest = [pipeline.handle(p) for p in payloads[10:]]
    assert sum(r.stale for r in rest) == 0 and sum(r.accepted for r in rest) == 30 * BATCH
    ahead = json.loads(payloads[0])
    ahead["samples"] = ahead["samples"][:1]
    ahead["samples"][0]["ts"] = now + MAX_AHEAD_S  # at the bound: taken
    assert pipeline.handle(json.dumps(ahead).encode()).accepted == 1


def test_gap_restarts_the_window_run(model_v1: EdgeModel) -> None:
    spec = model_v1.spec
    length, stride, dt = spec.geometry.length, spec.geometry.stride, spec.sampling.interval_s
    ts = [1_700_000_000.0 + i * dt for i in range(length + stride)]
    ts += [ts[-1] + spec.windows.max_gap_s + 0.5 + i * dt for i in range(length)]
    rows = [{"seq": i, "ts": t, **dict.fromkeys(spec.input_columns, 1.0)} for i, t in enumerate(ts)]
    pipeline = TurbinePipeline("t9", model_v1)
    got = [w.t_end for p in Stream("t9", np.asarray(ts), rows).messages(13) for w in pipeline.handle(p).windows]
    assert got == [ts[length - 1], ts[length + stride - 1], ts[-1]]


# -- bad messages ----------------------------------------------------------------------------------------
def _good(spec, tid: str = "turbine-1", n: int = 3) -> dict:
    return {"v": 1, "turbine_id": tid,
            "samples": [{"seq": i, "ts": 1_700_000_000.0 + i * 0.05, **dict.fromkeys(spec.input_columns, 0.5)}
                        for i in range(n)]}


def _mutate(doc: dict, path: tuple, value: object) -> bytes:
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(doc).encode()


_DELETE = object()


def test_message_forms_accepted(model_v1: EdgeModel) -> None:
    spec = model_v1.spec
    doc = _good(spec, "turbine-1")
    doc["samples"][1][spec.input_columns[0]] = None
    batch = parse_sensor_message(json.dumps(doc).encode(), spec, "turbine-1")
    assert [s.seq for s in batch] == [0, 1, 2] and len(batch[0].values) == len(spec.input_columns)
    assert math.isnan(batch[1].values[0]) and batch[1].ts == doc["samples"][1]["ts"]
    doc["samples"][2]["seq"] = 2**62 + 1  # beyond float64's integers: kept exact
    assert parse_sensor_message(json.dumps(doc).encode(), spec, "turbine-1")[2].seq == 2**62 + 1
    single = {"v": 1, "turbine_id": "turbine-1", **doc["samples"][0]}  # not a SensorMessage: no "samples"
    with pytest.raises(BadMessage):
        parse_sensor_message(json.dumps(single).encode(), spec, "turbine-1")


def test_default_size_limit(model_v1: EdgeModel) -> None:
    spec = model_v1.spec
    big = json.dumps(_good(spec, "t1", 4000)).encode()
    assert len(big) > 256_000
    with pytest.raises(BadMessage, match="256000-byte limit"):
        parse_sensor_message(big, spec, "t1")
    assert len(parse_sensor_message(big, spec, "t1", max_bytes=len(big))) == 4000


@pytest.mark.parametrize("case", [
    "garbage", "truncated", "oversized", "not_object", "no_version", "version_2", "version_str",
    "wrong_turbine", "no_turbine", "samples_not_list", "samples_empty", "sample_not_object", "seq_str",
    "seq_bool", "ts_str", "ts_nan_token", "value_str", "value_bool", "value_list", "missing_column",
    "ts_backwards", "ts_repeated", "ts_far_future", "not_utf8",
])
def test_bad_messages_leave_state_unchanged(model_v1: EdgeModel, streams, case: str) -> None:
    spec = model_v1.spec
    stream = next(iter(streams.values()))
    tid = stream.turbine_id
    pipeline = TurbinePipeline(tid, model_v1)
    for payload in list(stream.messages())[:7]:  # part-way into a window run
        pipeline.handle(payload)
    before = pipeline.snapshot()
    doc = _good(spec, tid)
    col = spec.input_columns[-1]
    payload = {
        "garbage": b"\x00\x17not json at all{",
        "truncated": json.dumps(doc).encode()[:-9],
        "oversized": json.dumps(_good(spec, tid, 2000)).encode(),
        "not_object": b"[1, 2, 3]",
        "no_version": _mutate(doc, ("v",), _DELETE),
        "version_2": _mutate(doc, ("v",), 2),
        "version_str": _mutate(doc, ("v",), "1"),
        "wrong_turbine": _mutate(doc, ("turbine_id",), "someone-else"),
        "no_turbine": _mutate(doc, ("turbine_id",), _DELETE),
        "samples_not_list": _mutate(doc, ("samples",), {"a": 1}),
        "samples_empty": _mutate(doc, ("samples",), []),
        "sample_not_object": _mutate(doc, ("samples", 1), 42),
        "seq_str": _mutate(doc, ("samples", 0, "seq"), "0"),
        "seq_bool": _mutate(doc, ("samples", 0, "seq"), True),
        "ts_str": _mutate(doc, ("samples", 2, "ts"), "2026-01-01T00:00:00Z"),
        "ts_nan_token": json.dumps(doc).encode().replace(b'"ts": 1700000000.0,', b'"ts": NaN,'),
        "value_str": _mutate(doc, ("samples", 1, col), "3.2"),
        "value_bool": _mutate(doc, ("samples", 1, col), False),
        "value_list": _mutate(doc, ("samples", 1, col), [1.0]),
        "missing_column": _mutate(doc, ("samples", 2, col), _DELETE),
        "ts_backwards": _mutate(doc, ("samples", 2, "ts"), 1_600_000_000.0),
        "ts_repeated": _mutate(doc, ("samples", 2, "ts"), doc["samples"][1]["ts"]),
        "ts_far_future": _mutate(doc, ("samples", 2, "ts"), time.time() + MAX_AHEAD_S + 3600),
        "not_utf8": json.dumps(doc).encode().replace(b"turbine_id", b"turbine_\xff"),
    }[case]
    with pytest.raises(BadMessage) as info:
        pipeline.handle(payload, max_bytes=64_000)
    assert info.value.reason
    expected = {"oversized": "exceeds", "wrong_turbine": "someone-else", "version_2": "unknown schema version",
                "truncated": "not valid JSON", "missing_column": col, "garbage": "JSON",
                "ts_backwards": "$.samples[2].ts", "ts_repeated": "$.samples[2].ts",
                "ts_far_future": "device's clock"}
    assert expected.get(case, "") in info.value.reason
    assert pipeline.snapshot() == before
    assert pipeline.bad_messages == 1
    # and the stream carries on as if nothing happened
    assert pipeline.handle(next(iter(list(stream.messages())[7:8]))).accepted == BATCH


def test_numbers_parse_as_the_stdlib_reads_them(model_v1: EdgeModel) -> None:
    """Integers, floats and nulls of the spec's columns come out as the stdlib json module reads them (null:
    NaN); other keys are carried along and left out."""
    spec = model_v1.spec
    rng = np.random.default_rng(5)
    doc = _good(spec, "t1", 60)
    for i, sample in enumerate(doc["samples"]):
        sample["ts"] = 1_700_000_000 + i if i % 2 else 1_700_000_000.123456789 + i  # ints and floats
        for c in spec.input_columns:
            sample[c] = [None, int(rng.integers(-5, 5)), float(rng.normal() * 10.0 ** rng.integers(-8, 8))][i % 3]
        sample["source"] = "plc-1" if i % 2 else 7
    payload = json.dumps(doc).encode()
    batch = parse_sensor_message(payload, spec, "t1")
    expected = json.loads(payload)["samples"]
    assert [s.seq for s in batch] == [e["seq"] for e in expected]
    assert [s.ts for s in batch] == [float(e["ts"]) for e in expected]
    values = np.array([[e[c] for c in spec.input_columns] for e in expected], dtype=np.float64)
    np.testing.assert_array_equal(np.array([s.values for s in batch]), values)  # NaN where null


@pytest.mark.parametrize(("literal", "reason"), [
    (b"1" + b"0" * 400, "Number out of range"),  # an integer beyond the float range
    (b"1e999", "Number out of range"),  # would parse to inf
])
def test_out_of_range_numbers_are_bad_messages(model_v1: EdgeModel, literal: bytes, reason: str) -> None:
    spec = model_v1.spec
    col = spec.input_columns[2]
    payload = json.dumps(_good(spec, "t1")).encode().replace(f'"{col}": 0.5'.encode(), f'"{col}": X'.encode(), 2)
    with pytest.raises(BadMessage, match=re.escape(f"{reason} - at `$.samples[0].{col}`")):
        parse_sensor_message(payload.replace(b"X", literal), spec, "t1")
    big_ts = json.dumps(_good(spec, "t1")).encode().replace(b'"ts": 1700000000.05', b'"ts": ' + literal)
    with pytest.raises(BadMessage, match=re.escape(f"{reason} - at `$.samples[1].ts`")):
        parse_sensor_message(big_ts, spec, "t1")


def test_features_are_the_reference_arithmetic(model_v1: EdgeModel) -> None:
    """The detector's per-message features equal training's compute_features and quaternion_to_euler bit for
    bit, in any chunking."""
    from shared.ml.features import FeaturePlan, compute_features, feature_matrix, quaternion_to_euler

    spec = model_v1.spec
    rng = np.random.default_rng(9)
    n = 997
    values = {c: rng.normal(size=n) for c in spec.input_columns}
    values[spec.input_columns[1]][[3, 50]] = np.nan
    feats = compute_features(values, spec)
    plan = FeaturePlan.of(spec)
    raw = np.column_stack([values[c] for c in spec.input_columns])
    chunked = np.concatenate([feature_matrix(raw[a:a + 13], plan) for a in range(0, n, 13)])
    np.testing.assert_array_equal(chunked, feats)
    derived = {d.name: d for d in spec.derived}
    for j, name in enumerate(spec.features):
        if name in derived:
            d = derived[name]
            angles = quaternion_to_euler(*(values[d.inputs[k]] for k in "wxyz"))
            ref = angles[("quaternion_roll", "quaternion_pitch", "quaternion_yaw").index(d.kind)]
        else:
            ref = values[name]
        np.testing.assert_array_equal(feats[:, j], ref.astype(np.float32))


# -- hot swap ------------------------------------------------------------------------------------------
def test_hot_swap_scores_every_window_once(model_v1: EdgeModel, bundles, streams, reference) -> None:
    scored, _ = reference
    model_v2 = EdgeModel.load(bundles[2])
    assert (model_v1.model_version, model_v2.model_version) == (1, 2)
    tid, stream = next(iter(streams.items()))
    pipeline = TurbinePipeline(tid, model_v1)
    n_messages = math.ceil(len(stream.rows) / BATCH)
    swap_at = n_messages // 2 + 3  # mid-stride: the buffer holds a partial window across the swap
    windows, events, versions = run_stream(pipeline, stream, swap_at, model_v2)
    ends = np.asarray([w.t_end for w in windows])
    assert len(windows) == len(scored[tid].t_end)
    assert np.all(np.diff(ends) > 0)
    np.testing.assert_array_equal(ends, scored[tid].t_end)
    np.testing.assert_allclose([w.score for w in windows], scored[tid].scores, rtol=1e-4, atol=1e-5)
    assert versions[:swap_at] == [1] * swap_at and set(versions[swap_at:]) == {2}
    swap_time = stream.rows[swap_at * BATCH]["ts"]
    assert {w.model_version for w in windows if w.t_end < swap_time} == {1}
    assert {w.model_version for w in windows if w.t_end >= swap_time} == {2}
    assert pipeline.model_version == 2 and pipeline.swaps == 1
    # episodes stay well-formed: every open has exactly one close, in order
    state: dict[str, str] = {}
    for e in events:
        eid = e.episode["episode_id"]
        assert state.get(eid) != "close"
        assert e.kind != "open" or eid not in state
        state[eid] = e.kind if e.kind != "update" else state[eid]
    assert all(kind == "close" for kind in state.values())


def test_swap_interrupts_an_open_episode_without_ending_it(model_v1: EdgeModel, bundles, streams,
                                                            reference) -> None:
    _, episodes = reference
    tid = next(t for t, eps in episodes.items() if eps)
    stream, episode = streams[tid], episodes[tid][0]
    model_v2 = EdgeModel.load(bundles[2])
    pipeline = TurbinePipeline(tid, model_v1)
    for payload in stream.messages():
        result = pipeline.handle(payload)
        if any(e.kind == "open" for e in result.events):
            break
    assert pipeline.tracker.current is not None
    swapped = pipeline.swap(model_v2)
    assert [(e.kind, e.episode["episode_id"]) for e in swapped.events] == [("interrupt", episode.episode_id)]
    assert swapped.events[0].episode["closed_at"] is None  # no end was seen: no resolution for the cloud
    assert swapped.model_version == 1  # reported under the model that opened it
    assert pipeline.tracker.current is None and pipeline.model_version == 2
    assert pipeline.stop().events == []  # nothing open any more


def test_stop_interrupts_an_open_episode_and_flush_closes_it(model_v1: EdgeModel, streams, reference) -> None:
    _, episodes = reference
    tid = next(t for t, eps in episodes.items() if eps)
    for end, kind in ((TurbinePipeline.stop, "interrupt"), (TurbinePipeline.flush, "close")):
        pipeline = TurbinePipeline(tid, model_v1)
        for payload in streams[tid].messages():
            if any(e.kind == "open" for e in pipeline.handle(payload).events):
                break
        (event,) = end(pipeline).events
        assert event.kind == kind and (event.episode["closed_at"] is None) == (kind == "interrupt")


def test_load_refuses_a_tampered_bundle(bundles, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundles[1], copy)
    with (copy / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError):
        EdgeModel.load(copy)


@pytest.mark.parametrize("case", ["windows_not_an_object", "window_not_the_graph_width", "deep_manifest"])
def test_load_turns_any_bundle_failure_into_a_bundle_error(bundles, tmp_path: Path, case: str) -> None:
    """A malformed manifest or one the graph disagrees with is a BundleError (reported as model_error), never
    another exception that would stop the detector."""
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundles[1], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    if case == "windows_not_an_object":
        manifest["feature_spec"]["windows"] = "x"
    elif case == "window_not_the_graph_width":
        manifest["feature_spec"]["windows"]["length_s"] *= 2
    text = '{"a":' * 100_000 + "1" + "}" * 100_000 if case == "deep_manifest" else json.dumps(manifest)
    (copy / "manifest.json").write_text(text)
    with pytest.raises(BundleError):
        EdgeModel.load(copy)


# -- outgoing messages ---------------------------------------------------------------------------------
def test_outgoing_messages(model_v1: EdgeModel, streams, reference) -> None:
    _, episodes = reference
    tid = next(t for t, eps in episodes.items() if eps)
    pipeline = TurbinePipeline(tid, model_v1)
    builder = MessageBuilder(tid)
    out = []
    for payload in streams[tid].messages():
        result = pipeline.handle(payload)
        out += [builder.anomaly(e, result.model_version) for e in result.events]
    assert out[0]["kind"] == "open" and out[0]["ended_at"] is None and out[0]["features"]
    assert out[0]["v"] == 2 and "ratios" not in out[0] and (out[0]["score"] > 1 or out[0]["missing"])
    assert set(out[0]["features"]) <= set(out[0]["contributions"]) | set(out[0]["missing"])
    assert [m["seq"] for m in out] == list(range(1, len(out) + 1))
    closes = [m for m in out if m["kind"] == "close"]
    assert closes and all(m["ended_at"] >= m["opened_at"] >= m["started_at"] for m in closes)
    p50, p99 = pipeline.latency_ms()
    h1 = builder.health(model_version=pipeline.model_version, inference_rate_hz=pipeline.inference_rate_hz(),
                        latency_p50_ms=p50, latency_p99_ms=p99, spool_depth=0, spool_dropped=0,
                        bad_messages=pipeline.bad_messages, uptime_s=1.5, windows_scored=pipeline.windows_scored)
    h2 = builder.health(model_version=1, inference_rate_hz=0, latency_p50_ms=None, latency_p99_ms=None,
                        spool_depth=0, spool_dropped=0, bad_messages=0, uptime_s=2, windows_scored=0)
    assert (h1["seq"], h2["seq"]) == (1, 2) and h1["v"] == 2 and h1["windows_scored"] > 0
    assert p50 is not None and p99 is not None and 0 < p50 <= p99
    for m in [*out, h1, h2]:
        json.dumps(m, allow_nan=False)


def test_swap_to_another_window_geometry_restarts_the_run(model_v1: EdgeModel, streams) -> None:
    from dataclasses import replace

    spec = model_v1.spec
    other = replace(spec, windows=replace(spec.windows, length_s=2.5, stride_s=0.25))

    class Stub:  # a model whose feature pipeline differs (the ONNX graph's window length is fixed)
        def __init__(self) -> None:
            self.spec, self.threshold, self.rule, self.model_version = other, model_v1.threshold, model_v1.rule, 3

        def offsets(self, turbine_id: str) -> np.ndarray:
            return np.zeros(spec.n_features, np.float32)

        def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            assert x.shape[1:] == (spec.n_features, 50)
            zeros = np.zeros((len(x), spec.n_features), np.float32)
            return np.zeros(len(x), np.float32), zeros, zeros

    stream = next(iter(streams.values()))
    pipeline = TurbinePipeline(stream.turbine_id, model_v1)
    payloads = list(stream.messages(10))
    for p in payloads[:15]:
        pipeline.handle(p)
    pipeline.swap(Stub())  # type: ignore[arg-type]
    ends = [w.t_end for p in payloads[15:25] for w in pipeline.handle(p).windows]
    first = 15 * 10
    assert ends[:3] == [stream.rows[first + 49]["ts"], stream.rows[first + 54]["ts"], stream.rows[first + 59]["ts"]]


# -- the pipeline agrees with the plain definitions ----------------------------------------------------
def test_step_many_is_step_window_by_window() -> None:
    from shared.ml.episodes import EpisodeRule, EpisodeTracker

    rng = np.random.default_rng(11)
    names = ["a", "b", "c"]
    threshold = 1.5
    rule = EpisodeRule(k=3, n=5, m=4, missing_tolerance=0.2, max_silence_s=30.0, update_interval_s=5.0)
    w = 600
    t = np.cumsum(np.where(rng.random(w) < 0.02, 45.0, 0.5))  # some silences close episodes
    contributions = (rng.random((w, 3)) * np.where(rng.random((w, 1)) < 0.3, 2.5, 0.6)).astype(np.float32)
    scores = contributions.sum(axis=1)
    scores[rng.random(w) < 0.01] = np.nan
    missing = np.where(rng.random((w, 3)) < 0.05, np.float32(0.2), np.float32(0.0)).astype(np.float32)
    missing[rng.random((w, 3)) < 0.03] = 0.5
    scores[rng.random(w) < 0.05] = np.float32(threshold)  # exactly at the threshold: not flagged
    operating = rng.random(w) > 0.1
    one, many = EpisodeTracker("t", rule, threshold, names), EpisodeTracker("t", rule, threshold, names)
    expected = [e for i in range(w)
                for e in one.step(float(t[i]), scores[i], contributions[i], missing[i], bool(operating[i]))]
    got, i = [], 0
    while i < w:
        j = i + int(rng.integers(1, 6))
        got += many.step_many(t[i:j].tolist(), scores[i:j], contributions[i:j], missing[i:j], operating[i:j].tolist())
        i = j
    assert len(expected) > 10 and got == expected
    assert one.flush() == many.flush()


def test_window_ends_are_training_windows_in_any_split(model_v1: EdgeModel) -> None:
    """window_ends, fed a series in pieces of any size (gaps anywhere, also between two pieces, steps exactly at
    the gap limit), ends the windows that shared.ml.features.window_starts cuts from the whole series."""
    from dataclasses import replace

    from detector.pipeline import window_ends

    from shared.ml.features import window_starts

    spec = model_v1.spec
    rng = np.random.default_rng(4)
    for length_s, stride_s in ((5.0, 0.5), (0.35, 0.15), (0.1, 0.05)):
        s = replace(spec, windows=replace(spec.windows, length_s=length_s, stride_s=stride_s))
        g, n = s.geometry, 3000
        steps = rng.choice([spec.sampling.interval_s, g.max_gap_s, g.max_gap_s + 0.01, 40.0], n, p=[.96, .02, .01, .01])
        t = 1_700_000_000.0 + np.cumsum(steps)
        expected = (window_starts(t, s) + g.length - 1).tolist()
        got: list[int] = []
        prev, run, i = None, 0, 0
        while i < n:
            piece = t[i:i + int(rng.integers(1, 45))].tolist()
            ends, run = window_ends(piece, prev, run, g.length, g.stride, g.max_gap_s)
            got += [i + e for e in ends]
            prev, i = piece[-1], i + len(piece)
        assert got == expected and len(expected) > 50


def test_operating_regime_is_judged_as_in_training(model_v1: EdgeModel) -> None:
    """The pipeline decides operating exactly as operating_mask on training's windows, missing readings and all."""
    from shared.ml.features import compute_features, make_windows, operating_mask, window_starts

    spec = model_v1.spec
    assert spec.operating is not None
    rng = np.random.default_rng(3)
    n = 1500
    ts = 1_700_000_000.0 + np.arange(n) * spec.sampling.interval_s
    values = {c: rng.normal(size=n) for c in spec.input_columns}
    wind = spec.operating.feature
    level = spec.operating.min + np.repeat(rng.choice([-1.0, -0.01, 0.0, 0.01, 1.0], n // 50 + 1), 50)[:n]
    values[wind] = level + rng.choice([-0.02, 0.0, 0.02], n)
    values[wind][rng.random(n) < 0.05] = np.nan
    values[wind][700:800] = np.nan  # an entirely missing stretch
    rows = [{"seq": i, "ts": float(ts[i]), **{c: float(values[c][i]) for c in spec.input_columns}} for i in range(n)]
    pipeline = TurbinePipeline("t5", model_v1)
    got = [w.operating for p in Stream("t5", ts, rows).messages() for w in pipeline.handle(p).windows]
    windows = make_windows(compute_features(values, spec), window_starts(ts, spec), spec.geometry.offsets())
    expected = operating_mask(windows, spec).tolist()
    assert got == expected and 0 < sum(got) < len(got)


def test_window_records_are_built_on_access(model_v1: EdgeModel, streams) -> None:
    """Result.windows counts without building records, and reads like the list it stands for."""
    stream = next(iter(streams.values()))
    pipeline = TurbinePipeline(stream.turbine_id, model_v1)
    results = [pipeline.handle(p) for p in stream.messages()]
    scored = [r for r in results if r.windows]
    assert scored and sum(len(r.windows) for r in results) == pipeline.windows_scored
    windows = scored[-1].windows
    as_list = list(windows)
    assert len(as_list) == len(windows) and windows[0] is as_list[0] and windows[-1:] == as_list[-1:]
    assert windows == as_list and [w.model_version for w in windows] == [model_v1.model_version] * len(windows)
    assert as_list[0].t_end < as_list[-1].t_end or len(as_list) == 1


# -- drifting features ---------------------------------------------------------------------------------
DRIFT_SPEC = """spec_version: 2
name: warm-loop
time_column: time
time_format: epoch_s
columns: [time, temperature, flow, pressure]
features: [temperature, flow, pressure]
sampling: {rate_hz: 1.0}
drift: {features: [temperature], baseline_s: 30}
"""


def _loop_csv(path: Path, start: float, rows: int, seed: int, gap_after: int | None = None,
              step_at: int | None = None) -> None:
    """A warming loop at 1 Hz: temperature drifts up, flow and pressure move together; optionally a gap
    of 20 s and a temperature step (a fault the drift baseline must still see)."""
    rng = np.random.default_rng(seed)
    lines = ["time,temperature,flow,pressure"]
    t = start
    for i in range(rows):
        common = rng.normal()
        temperature = 40 + 0.01 * i + rng.normal(0, 0.05) + (3.0 if step_at is not None and i >= step_at else 0.0)
        lines.append(f"{t:.1f},{temperature:.3f},{30 + common + rng.normal(0, 0.1):.3f},"
                     f"{2 + 0.1 * common + rng.normal(0, 0.01):.4f}")
        t += 21.0 if gap_after is not None and i == gap_after else 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def drift_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(compiled bundle, model.tar.gz, test data) of a PCA model with a drifting feature."""
    from nacelle.train_runner import run_training_job
    from training_jobs.compile import compile_bundle

    root = tmp_path_factory.mktemp("drift")
    _loop_csv(root / "train" / "loop-1" / "a.csv", 1_700_000_000.0, 1200, 1)
    (root / "spec.yaml").write_text(DRIFT_SPEC)
    job = run_training_job(root / "job", "drift-job", {"train": root / "train"}, {"families": "pca"},
                           spec_file=root / "spec.yaml", echo=None)
    assert job.ok, job.log_file.read_text()
    assert job.model_archive is not None
    _loop_csv(root / "test" / "loop-1" / "b.csv", 1_700_100_000.0, 700, 2, gap_after=300, step_at=500)
    compile_bundle(job.model_archive, root / "edge", None, 1, warmup=5, runs=20)
    return root / "edge", job.model_archive, root / "test"


def test_drift_baseline_parity_across_a_gap(drift_case) -> None:
    """The context of a drifting feature reaches back across a gap and is missing before the first
    sample: the detector scores exactly the evaluator's windows, and the step still opens an episode."""
    edge_dir, archive, test_dir = drift_case
    edge = EdgeModel.load(edge_dir)
    g = edge.spec.geometry
    assert edge.spec.drift.features == ("temperature",) and g.context == 30
    scored, episodes = evaluator(archive, test_dir)
    [ref] = scored.values()
    rows = [{"seq": i, "ts": float(t)} for i, t in enumerate(ref.t)]
    series = load_dataset([test_dir], edge.spec)[0]
    values = series.features.astype(np.float64)
    for row, v in zip(rows, values, strict=True):
        row.update(zip(edge.spec.input_columns, v.tolist(), strict=True))
    pipeline = TurbinePipeline("loop-1", edge)
    windows, events, _ = run_stream(pipeline, Stream("loop-1", ref.t, rows), None, None)
    np.testing.assert_array_equal([w.t_end for w in windows], ref.t_end)
    # within the compile check's tolerance (float32 sums in another order)
    np.testing.assert_allclose([w.score for w in windows], ref.scores, rtol=1e-3, atol=1e-4)
    gap = int(np.flatnonzero(np.diff(ref.t) > 1.5)[0]) + 1
    assert ref.t_end[0] == ref.t[g.length - 1]  # scoring starts once the scored samples are there
    assert ref.t[gap + g.length - 1] in set(ref.t_end)  # ...and again right after the gap, context and all
    opened = [e.episode["opened_at"] for e in events if e.kind == "open"]
    assert opened == [ep.opened_at for ep in episodes["loop-1"]]
    assert any(ref.t[500] <= t <= ref.t[500] + 60 for t in opened), "the temperature step opens an episode"


def test_a_failed_regime_sensor_is_reported_although_it_reads_below_the_regime(model_v1: EdgeModel, streams) -> None:
    """The wind sensor reads below the operating minimum, so its windows are outside the regime. When it is
    stuck there or drops 40 % of its readings, the regime is unknown: those windows are judged and the failed
    wind opens an episode (before, the failure hid itself). A live reading below the minimum opens nothing."""
    spec = model_v1.spec
    assert spec.operating is not None
    wind, minimum, interval = spec.operating.feature, spec.operating.min, spec.sampling.interval_s
    stream = next(iter(streams.values()))
    a, b = 200, 200 + round(30 / interval)  # 30 s of calm or of sensor failure

    def missing_features(failure: str) -> set[str]:
        rng = np.random.default_rng(5)
        rows = [dict(r) for r in stream.rows[:b + 400]]
        for i in range(a, b):
            calm = minimum - 1.0 + (0.0 if failure == "stuck" else float(rng.uniform(-0.2, 0.2)))
            rows[i][wind] = None if failure == "dropping" and rng.random() < 0.4 else calm
        pipeline = TurbinePipeline(stream.turbine_id, model_v1)
        events = [e for p in Stream(stream.turbine_id, stream.t, rows).messages() for e in pipeline.handle(p).events]
        events += pipeline.flush().events
        return {name for e in events for name in e.episode["missing"]}

    assert wind not in missing_features("none")
    assert wind in missing_features("stuck")
    assert wind in missing_features("dropping")
