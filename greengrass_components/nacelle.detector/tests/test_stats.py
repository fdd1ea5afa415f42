"""The detector's period statistics (detector/stats.py): the training job's code on the device's windows, periods in
sample time, a model swap closing the period, bounded memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from detector.messages import SampleBatch
from detector.pipeline import Result, TurbinePipeline, WindowRecords
from detector.stats import PeriodStats

from nacelle.simulator.stream import TurbineStream
from shared.messages import StatsMessage, validate
from shared.ml import drift
from shared.ml.dataset import TurbineSeries, series_windows
from shared.ml.episodes import EpisodeRule
from shared.ml.features import compute_features
from shared.ml.spec import FeatureSpec, default_spec

SPEC = default_spec().with_drift(())
PERIOD = 120.0


@dataclass
class MeanModel:
    """The EdgeModel surface with a cheap score (the mean absolute input of the window): no ONNX needed here."""

    spec: FeatureSpec
    model_version: int | None = 1
    threshold: float = 1e9

    @property
    def rule(self) -> EpisodeRule:
        return self.spec.rule()

    def offsets(self, turbine_id: str) -> np.ndarray:
        return np.zeros(self.spec.n_features, np.float32)

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = x.shape[1]
        return (np.nanmean(np.abs(x), axis=(1, 2)).astype(np.float32), np.zeros((len(x), n), np.float32),
                np.zeros((len(x), n), np.float32))


def columns(stream: TurbineStream, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    batch = stream.next_batch(seconds)
    ts = np.array([s["ts"] for s in batch])
    values = np.array([[np.nan if s[c] is None else s[c] for c in SPEC.input_columns] for s in batch], dtype=float)
    return ts, values


def test_each_period_is_summarised_with_the_training_jobs_code() -> None:
    stream, model = TurbineStream("turbine-01", 5), MeanModel(SPEC)
    pipeline, stats = TurbinePipeline("turbine-01", model), PeriodStats("turbine-01", PERIOD)  # type: ignore[arg-type]
    all_ts, all_values, messages = [], [], []
    for _ in range(60):  # 10 min in 10 s messages
        ts, values = columns(stream, 10.0)
        all_ts.append(ts)
        all_values.append(values)
        result = pipeline.handle_samples(SampleBatch(np.arange(len(ts)), ts, values).samples())
        messages += stats.observe(result, SPEC)
    assert len(messages) >= 4
    # offline, as the training job sees the same samples: windows, their last samples, the operating regime
    t = np.concatenate(all_ts)
    raw = np.concatenate(all_values)
    features = compute_features({c: raw[:, j] for j, c in enumerate(SPEC.input_columns)}, SPEC)
    w = series_windows(TurbineSeries("turbine-01", t, features), SPEC)
    scores = model.score(w.x)[0]
    for message in messages:
        m = validate(StatsMessage, message)
        assert m.period_start % PERIOD == 0 and m.period_s == PERIOD and m.model_version == 1
        inside = (w.t_end >= m.period_start) & (w.t_end < m.period_start + PERIOD)
        keep = inside & w.operating
        assert (m.windows, m.operating_windows) == (int(inside.sum()), int(keep.sum()))
        for j, name in enumerate(SPEC.features):
            expected = drift.summarise(w.x[keep][:, j, -1])
            assert expected is not None and m.count[name] == expected.count
            assert m.quantiles[name] == pytest.approx(expected.quantiles, rel=1e-6, abs=1e-9)
        score = drift.summarise(scores[keep])
        assert score is not None and m.score_quantiles == pytest.approx(score.quantiles, rel=1e-6)


def result(t_end: np.ndarray, scores: np.ndarray, version: int | None = 1, operating: np.ndarray | None = None
           ) -> Result:
    """A handled message's result whose windows end at its samples."""
    n = len(t_end)
    values = np.tile(np.array([1.0, 0.0, 0.0, 0.0, 2.5, 2.0, 70.0]), (n, 1))[:, :len(SPEC.input_columns)]
    values[:, -1] = scores * 10
    flags = [True] * n if operating is None else operating.tolist()
    windows = WindowRecords(list(t_end), scores.astype(np.float32), np.zeros((n, 6)), np.zeros((n, 6)), flags,
                            version, 0.0)
    return Result(windows=windows, model_version=version, accepted=n,
                  batch=SampleBatch(np.arange(n), np.asarray(t_end, dtype=float), values))


def test_a_swap_closes_the_period_and_a_stop_sends_the_period_so_far() -> None:
    stats = PeriodStats("turbine-02", PERIOD)
    assert stats.flush() == []
    t = 1_000_020.0 + 0.5 * np.arange(40)  # the period [999_960, 1_000_080)
    assert stats.observe(result(t, np.full(40, 0.5)), SPEC) == []
    [closed] = stats.observe(result(t + 30, np.full(40, 0.7), version=2), SPEC)  # the new model's first window
    assert (closed["model_version"], closed["windows"], closed["score_mean"]) == (1, 40, 0.5)
    [rest] = stats.flush()
    assert (rest["model_version"], rest["windows"], rest["score_mean"]) == (2, 40, pytest.approx(0.7))
    assert stats.flush() == []


def test_windows_outside_the_operating_regime_are_counted_not_summarised() -> None:
    stats = PeriodStats("turbine-03", PERIOD)
    t = 120.0 * 100 + np.arange(100.0)
    stats.observe(result(t, np.linspace(0, 1, 100), operating=np.arange(100) % 4 == 0), SPEC)
    [m] = stats.flush()
    assert (m["windows"], m["operating_windows"], m["score_count"]) == (100, 25, 25)


def test_a_long_period_keeps_a_bounded_uniform_sample() -> None:
    stats = PeriodStats("turbine-04", 86_400.0, max_rows=256, seed=3)
    rng = np.random.default_rng(0)
    for k in range(40):  # 4000 windows, their scores uniform on [0, 1)
        stats.observe(result(86_400.0 + 100 * k + np.arange(100.0), rng.random(100)), SPEC)
    [m] = stats.flush()
    assert (m["windows"], m["operating_windows"], m["score_count"]) == (4000, 4000, 256)
    assert m["score_mean"] == pytest.approx(0.5, abs=0.05) and m["score_quantiles"][9] == pytest.approx(0.5, abs=0.08)
    assert stats._rows.shape[0] == 256  # never grown past max_rows


def test_messages_are_compact() -> None:
    stats = PeriodStats("turbine-05", PERIOD)
    stats.observe(result(1200.0 + np.arange(100.0) * 0.5, np.random.default_rng(1).random(100)), SPEC)
    [m] = stats.flush()
    assert len(StatsMessage(**m).to_json()) < 4096
