"""Held-out data (holdout slices or blocked folds) and the documented choice between candidate families."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from shared.ml.dataset import TurbineSeries, overlaps_fault, series_windows
from shared.ml.features import window_starts
from shared.ml.metrics import Fault
from shared.ml.spec import FeatureSpec
from training_jobs.calibration import Calibration
from training_jobs.hyperparameters import Hyperparameters
from training_jobs.selection import (
    CHOICE_RULE,
    DETECTION_TIE,
    SHORT_DATA_MARGIN,
    Candidate,
    choose,
    normal_windows,
    plan,
    threshold_margin,
    unbeatable,
)

# -- choose: CHOICE_RULE -------------------------------------------------------------------------------


def candidate(family: str, f1: float | None, fa: float | None = 0.5, point_f1: float | None = 0.5) -> Candidate:
    validation = {"event": None if f1 is None else {"f1": f1, "precision": f1, "recall": f1},
                  "point": {"f1": point_f1}, "false_alarms_per_turbine_day": fa}
    return Candidate(family, [], Calibration(1.0, "max", 10, 1, 0.5), [], validation)


def chosen(*candidates: Candidate) -> str:
    return choose(list(candidates))[0].family


def test_a_clearly_better_detection_wins_despite_more_false_alarms():
    assert chosen(candidate("pca", 0.80, fa=0.1), candidate("conv1d", 0.95, fa=1.0, point_f1=0.8)) == "conv1d"
    assert chosen(candidate("conv1d", 0.80, fa=0.1), candidate("pca", 0.80 + 2 * DETECTION_TIE + 0.01, fa=1.0)) == "pca"


def test_detection_counts_how_much_of_each_fault_is_covered_not_only_that_it_was_found():
    # equal event F1: the model that loses the faults after their first minutes (low point F1) loses
    found_and_lost = candidate("pca", 0.70, fa=0.01, point_f1=0.41)
    covered = candidate("conv1d", 0.76, fa=0.02, point_f1=0.75)
    assert chosen(found_and_lost, covered) == "conv1d"


def test_within_the_tie_fewer_false_alarms_win():
    assert chosen(candidate("pca", 0.85, fa=1.0), candidate("conv1d", 0.84, fa=0.2)) == "conv1d"
    assert chosen(candidate("pca", 0.83, fa=0.2), candidate("conv1d", 0.85, fa=1.0)) == "pca"
    assert chosen(candidate("pca", 0.90, fa=1.0, point_f1=0.9),
                  candidate("conv1d", 0.90, fa=0.2, point_f1=0.9 - 2 * DETECTION_TIE + 0.01)) == "conv1d"


def test_then_the_simpler_family_whatever_the_order():
    assert chosen(candidate("conv1d", 0.9), candidate("pca", 0.9)) == "pca"
    assert chosen(candidate("pca", 0.9), candidate("conv1d", 0.9)) == "pca"


def test_missing_figures_rank_last():
    # no scorable fault: event F1 counts as 0; no false-alarm figure counts as infinitely many
    assert chosen(candidate("pca", None), candidate("conv1d", 2 * DETECTION_TIE + 0.05)) == "conv1d"
    assert chosen(candidate("pca", 0.9, fa=None), candidate("conv1d", 0.9, fa=3.0)) == "conv1d"
    assert chosen(candidate("pca", None, point_f1=None), candidate("conv1d", None, point_f1=None)) == "pca"


def test_the_reason_names_the_figures_and_the_rule():
    best, reason = choose([candidate("pca", 0.85, fa=1.0), candidate("conv1d", 0.84, fa=0.2)])
    assert best.family == "conv1d"
    assert reason.startswith("conv1d: validation detection 0.670 (event F1 0.840, point F1 0.500), "
                             "0.20 false alarms/turbine-day")
    assert "pca 0.675" in reason and CHOICE_RULE in reason
    alone, reason = choose([candidate("pca", 0.7)])
    assert alone.family == "pca" and "others" not in reason


def test_a_family_is_left_unfitted_only_when_the_rule_could_never_choose_it():
    grid = [(f1, fa, point) for f1 in (None, 0.5, 0.85, 0.9, 0.95, 1.0) for fa in (None, 0.0, 0.3)
            for point in (0.7, 0.8, 0.9, 1.0)]
    pruned = 0
    for f1, fa, point in grid:
        simple = candidate("pca", f1, fa=fa, point_f1=point)
        if unbeatable([simple], "conv1d") is None:
            continue
        pruned += 1
        for other in grid:  # whatever the autoencoder would have scored, pca is chosen
            assert chosen(simple, candidate("conv1d", *other[:1], fa=other[1], point_f1=other[2])) == "pca"
    assert pruned > 0
    assert unbeatable([candidate("pca", 1.0, fa=0.0, point_f1=0.79)], "conv1d") is None  # detection 0.895
    assert unbeatable([candidate("pca", 1.0, fa=0.01, point_f1=1.0)], "conv1d") is None  # a false alarm
    assert unbeatable([candidate("conv1d", 1.0, fa=0.0, point_f1=1.0)], "pca") is None  # pca is simpler


# -- plan: holdout slices and blocked folds ----------------------------------------------------------------


def spec_1hz(drift: list[str]) -> FeatureSpec:
    return FeatureSpec.from_dict({"name": "p", "time_column": "t", "columns": ["t", "a", "b"], "features": ["a", "b"],
                                  "sampling": {"rate_hz": 1.0}, "drift": {"features": drift}})


def turbines(n: int, count: int = 2) -> list[TurbineSeries]:
    return [TurbineSeries(f"m{i}", 1e9 + 7.0 * i + np.arange(n, dtype=float), np.zeros((n, 2), np.float32))
            for i in range(count)]


def scored_times(piece: TurbineSeries, spec: FeatureSpec) -> set[float]:
    """Every sample some window of the piece scores."""
    length = spec.geometry.length
    return {float(piece.t[s + i]) for s in window_starts(piece.t, spec) for i in range(length)}


def test_short_data_uses_folds_that_hold_out_each_block_once():
    spec, hp = spec_1hz([]), Hyperparameters()
    series = turbines(3000)
    the_plan = plan(series, spec, hp, usable_samples=6000)
    assert the_plan.mode == "folds" and len(the_plan.splits) == hp.folds and the_plan.test == []
    for s in series:
        blocks = [p for split in the_plan.splits for p in split.held if p.turbine_id == s.turbine_id]
        assert len(blocks) == hp.folds
        assert np.array_equal(np.concatenate([p.t for p in blocks]), s.t)  # the blocks partition the data
    for split in the_plan.splits:
        for held in split.held:
            train = np.concatenate([p.t for p in split.train if p.turbine_id == held.turbine_id])
            assert not set(train) & set(held.t)
            assert len(train) + len(held.t) == 3000


def test_enough_data_uses_holdout_slices():
    spec, hp = spec_1hz([]), Hyperparameters()
    series = turbines(12_000)
    the_plan = plan(series, spec, hp, usable_samples=24_000)
    assert the_plan.mode == "holdout" and len(the_plan.splits) == 1
    [split] = the_plan.splits
    for train, val, test in zip(split.train, split.held, the_plan.test, strict=True):
        assert train.t[-1] + spec.window_seconds < val.t[0] and val.t[-1] + spec.window_seconds < test.t[0]
        assert not scored_times(val, spec) & set(train.t)


def test_fold_training_data_never_holds_a_held_out_sample_nor_its_baseline():
    spec = spec_1hz(["a"])  # drift: a 20 s baseline before every 10-sample window
    the_plan = plan(turbines(3000), spec, Hyperparameters(), usable_samples=6000)
    for split in the_plan.splits:
        for held in split.held:
            train = {float(x) for p in split.train if p.turbine_id == held.turbine_id for x in p.t}
            assert not train & set(held.t)


def test_holdout_with_a_drift_baseline_scores_no_training_sample():
    spec = spec_1hz(["a"])
    the_plan = plan(turbines(15_000), spec, Hyperparameters(), usable_samples=30_000)
    assert the_plan.mode == "holdout"
    [split] = the_plan.splits
    for train, val, test in zip(split.train, split.held, the_plan.test, strict=True):
        assert not scored_times(val, spec) & set(train.t)
        assert not scored_times(test, spec) & set(val.t)


def test_fold_blocks_with_a_drift_baseline_score_each_sample_once():
    spec = spec_1hz(["a"])
    the_plan = plan(turbines(3000, count=1), spec, Hyperparameters(), usable_samples=3000)
    blocks = [scored_times(p, spec) for split in the_plan.splits for p in split.held]
    assert sum(len(b) for b in blocks) == len(set().union(*blocks))


def test_short_data_widens_the_threshold_unless_the_operator_sets_the_margin():
    assert threshold_margin(Hyperparameters(), "folds") == SHORT_DATA_MARGIN > 1.0
    assert threshold_margin(Hyperparameters(), "holdout") == 1.0
    assert threshold_margin(Hyperparameters(threshold_margin=1.0), "folds") == 1.0  # the calibrated level itself
    assert threshold_margin(Hyperparameters(threshold_margin=2.0), "holdout") == 2.0


# -- normal_windows: the training windows ---------------------------------------------------------------------
def _plant(n: int, seed: int = 3) -> tuple[FeatureSpec, list[TurbineSeries], list[Fault]]:
    """Two machines with a stopped stretch (outside the operating regime), a gap and a labelled fault."""
    spec = FeatureSpec.from_dict({"name": "p", "time_column": "t", "columns": ["t", "a", "b"], "features": ["a", "b"],
                                  "sampling": {"rate_hz": 1.0}, "operating": {"feature": "a", "min": 0.0}})
    rng = np.random.default_rng(seed)
    pieces = []
    for k in range(2):
        t = 1e9 + k * 1e7 + np.arange(n, dtype=float)
        t[n // 2:] += 600.0  # a gap
        x = rng.normal(1.0, 0.1, (n, 2)).astype(np.float32)
        x[n // 5: n // 5 + 50, 0] = -1.0  # stopped
        pieces.append(TurbineSeries(f"m{k}", t, x))
    faults = [Fault("m1", "f", "high", float(pieces[1].t[n // 3]), float(pieces[1].t[n // 3 + 40]))]
    return spec, pieces, faults


def test_normal_windows_are_the_evenly_spaced_ones_of_all_normal_windows() -> None:
    spec, pieces, faults = _plant(3000)
    every = normal_windows(pieces, spec, faults, 10.0, 1)
    windows = [series_windows(p, spec, 1) for p in pieces]  # all of them, then the normal ones: the definition
    reference = [w.x[w.operating & ~overlaps_fault(w, faults, 10.0)] for w in windows]
    assert np.array_equal(every, np.concatenate(reference), equal_nan=True)
    assert 0 < len(every) < 2 * 3000  # stopped, fault and gap-crossing windows left out
    assert np.isfinite(every[:, :, -spec.geometry.length:]).all()  # (the context may reach before the data)
    assert np.array_equal(normal_windows(pieces, spec, faults, 10.0, 1, len(every) + 5), every, equal_nan=True)
    for limit in (1, 2, 777, len(every) - 1):
        picked = every[np.linspace(0, len(every) - 1, limit).astype(np.int64)]
        assert np.array_equal(normal_windows(pieces, spec, faults, 10.0, 1, limit), picked, equal_nan=True)


def test_normal_windows_never_builds_more_windows_than_it_keeps_and_one_chunk(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    """Months of samples: the windows of all of them would not fit in memory; the job builds only those it keeps."""
    import training_jobs.selection as selection

    spec, pieces, faults = _plant(20_000)
    monkeypatch.setattr(selection, "WINDOW_CHUNK", 1_000)
    tracemalloc.start()
    try:
        kept = normal_windows(pieces, spec, faults, 10.0, 1, 500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    window_bytes = spec.n_features * spec.geometry.width * 4
    assert len(kept) == 500
    assert peak < 8 * (1_000 + 500) * window_bytes + 2_000_000  # all 40,000 windows took 24 MB
