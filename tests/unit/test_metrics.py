import numpy as np
import pytest

from shared.errors import DataError
from shared.ml.episodes import Episode
from shared.ml.metrics import (
    Allowance,
    Fault,
    evaluate_episodes,
    faults_from_label_column,
    faulty_samples,
    flagged_samples,
    headline,
    parse_false_alarms,
    parse_labels,
    point_summary,
    scorable,
)
from shared.ml.spec import default_spec

ALLOWANCE = Allowance(tolerance_s=60.0, decision_s=13.0)  # the mini-turbine's: 5 s window + 8 s of alarm


def ep(turbine, opened, last_flagged, started=None, closed=None):
    return Episode(f"{turbine}-{opened}", turbine, opened if started is None else started, opened, last_flagged,
                   last_flagged if closed is None else closed)


def coverage(turbines, seconds=86_400.0):
    t = np.arange(0.0, seconds, 1.0)
    return dict.fromkeys(turbines, (t, seconds))


def test_allowance_of_a_spec():
    assert Allowance.of(default_spec()) == ALLOWANCE


def test_event_level_detection_window_and_false_alarms():
    faults = [Fault("a", "overspeed", "high", 1000, 1100), Fault("a", "generator_fault", "low", 5000, 5060),
              Fault("b", "overspeed", "medium", 2000, 2100)]
    episodes = [ep("a", 1010, 1200),  # detects the first fault after 10 s
                ep("a", 5115, 5200),  # opens 55 s after the end: still inside the 60 s tolerance
                ep("b", 1990, 2050),  # opened before the fault started: a false alarm, not a detection
                ep("b", 9000, 9100)]  # false alarm
    m = evaluate_episodes(episodes, faults, coverage(["a", "b"]), ALLOWANCE)
    assert m["event"]["recall"] == pytest.approx(2 / 3)
    assert m["event"]["precision"] == pytest.approx(2 / 4)
    assert m["event"]["f1"] == pytest.approx(2 * (0.5 * 2 / 3) / (0.5 + 2 / 3))
    assert m["event"]["mean_delay_s"] == pytest.approx((10 + 115) / 2)
    assert m["event"]["per_fault"]["overspeed"] == {"count": 2, "detected": 1, "recall": 0.5,
                                                    "mean_delay_s": 10.0}
    assert m["event"]["per_severity"]["medium"]["detected"] == 0
    assert m["false_alarms_per_turbine_day"] == pytest.approx(1.0)  # 2 false alarms over 2 turbine-days
    assert m["counts"] == {"episodes": 4, "false_alarms": 2, "faults": 3, "turbine_days": pytest.approx(2.0)}
    assert m["allowance"] == {"detection_tolerance_s": 60.0, "decision_s": 13.0}


def test_late_episode_is_not_a_detection():
    m = evaluate_episodes([ep("a", 1161, 1200)], [Fault("a", "x", "low", 1000, 1100)], coverage(["a"]), ALLOWANCE)
    assert m["event"]["recall"] == 0 and m["event"]["precision"] == 0


def test_a_fault_counts_once_however_many_episodes_it_opens():
    m = evaluate_episodes([ep("a", 1010, 1020), ep("a", 1050, 1060)], [Fault("a", "x", "low", 1000, 1100)],
                          coverage(["a"]), ALLOWANCE)
    assert (m["event"]["recall"], m["event"]["precision"], m["event"]["mean_delay_s"]) == (1.0, 1.0, 10.0)
    split = [ep("a", 1010, 1020), ep("a", 1040, 1050), ep("a", 1070, 1080), ep("a", 3000, 3010)]
    m = evaluate_episodes(split, [Fault("a", "x", "low", 1000, 1100)], coverage(["a"]), ALLOWANCE)
    assert m["event"]["precision"] == 0.5  # one fault found, one false alarm: its three episodes count once
    assert m["counts"]["episodes"] == 4 and m["counts"]["false_alarms"] == 1


def test_no_labels_gives_null_event_but_point_metrics():
    m = evaluate_episodes([ep("a", 10, 19)], [], coverage(["a"], seconds=43_200.0), ALLOWANCE)
    assert m["event"] is None
    point = m["point"]  # always present: the false alarm rate per sample needs no label
    assert point["confusion"] == {"tp": 0, "fp": 10, "fn": 0, "tn": 43_190}
    assert point["far"] == pytest.approx(10 / 43_200) and point["mar"] is None
    assert m["false_alarms_per_turbine_day"] == pytest.approx(2.0)


def test_pointwise_counts_samples_inside_episodes():
    faults = [Fault("a", "x", "low", 100, 199)]
    m = evaluate_episodes([ep("a", 150, 249)], faults, coverage(["a"], seconds=1000.0), ALLOWANCE)
    point = m["point"]
    assert point["precision"] == pytest.approx(0.5) and point["recall"] == pytest.approx(0.5)
    assert point["confusion"] == {"tp": 50, "fp": 50, "fn": 50, "tn": 850}
    assert point["far"] == pytest.approx(50 / 900) and point["mar"] == pytest.approx(0.5)


def test_a_sample_is_flagged_between_the_start_and_the_last_flagged_window():
    t = np.arange(0.0, 100.0)
    episode = ep("a", opened=30, last_flagged=50, started=20, closed=70)  # closed 20 s after its last flag
    flagged = flagged_samples(t, [episode])
    assert np.flatnonzero(flagged).tolist() == list(range(20, 51))
    assert np.flatnonzero(faulty_samples(t, [Fault("a", "x", "low", 10.5, 12.0)])).tolist() == [11, 12]


def test_faults_the_data_cannot_judge_do_not_count_for_recall_nor_as_false_alarms():
    data = coverage(["a"], seconds=2000.0)
    cut_at_start = Fault("a", "x", "low", -50, 30)  # onset before the data
    cut_at_end = Fault("a", "x", "low", 1990, 2100)  # too little data after the onset for the rule to decide
    whole = Fault("a", "x", "low", 1000, 1100)
    assert [scorable(f, data, ALLOWANCE) for f in (cut_at_start, cut_at_end, whole)] == [False, False, True]
    # the data needs min(end + tolerance, onset + 2 x decision) after the onset: here onset + 26 s
    assert scorable(Fault("a", "x", "low", 1973, 1990), data, ALLOWANCE)
    assert not scorable(Fault("a", "x", "low", 1974, 1990), data, ALLOWANCE)
    assert not scorable(whole, {"b": data["a"]}, ALLOWANCE)  # another turbine's data
    m = evaluate_episodes([ep("a", 10, 20), ep("a", 1995, 1999), ep("a", 1010, 1050)],
                          [cut_at_start, cut_at_end, whole], data, ALLOWANCE)
    assert m["counts"]["faults"] == 1 and m["event"]["recall"] == 1.0
    assert m["counts"]["false_alarms"] == 0  # episodes inside the cut faults are no false alarms


def test_point_summary_far_and_mar():
    s = point_summary({"tp": 30, "fp": 10, "fn": 10, "tn": 950})
    assert (s["precision"], s["recall"], s["far"], s["mar"]) == pytest.approx((0.75, 0.75, 10 / 960, 0.25))
    empty = point_summary({"tp": 0, "fp": 0, "fn": 0, "tn": 0})
    assert (empty["f1"], empty["far"], empty["mar"]) == (0.0, None, None)


def test_headline_includes_point_far_and_mar():
    faults = [Fault("a", "x", "high", 100, 199)]
    m = evaluate_episodes([ep("a", 150, 249)], faults, coverage(["a"], seconds=1000.0), ALLOWANCE)
    h = headline(m)
    assert set(h) == {"event_f1", "event_precision", "event_recall", "recall_medium_high", "mean_delay_s",
                      "point_f1", "point_far", "point_mar", "false_alarms_per_turbine_day"}
    assert h["recall_medium_high"] == 1.0 and h["point_far"] == pytest.approx(50 / 900)
    assert h["point_mar"] == pytest.approx(0.5) and h["point_f1"] == pytest.approx(0.5)
    unlabelled = headline(evaluate_episodes([ep("a", 150, 249)], [], coverage(["a"], seconds=1000.0), ALLOWANCE))
    assert unlabelled["event_f1"] is None and unlabelled["point_f1"] is None and unlabelled["point_mar"] is None
    assert unlabelled["point_far"] == pytest.approx(0.1)


def test_label_column_runs_become_faults():
    t = np.arange(10.0)
    faults = faults_from_label_column("a", t, np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 0], dtype=float))
    assert [(f.start, f.end) for f in faults] == [(1.0, 2.0), (5.0, 7.0)]


def test_a_labels_document_giving_a_key_twice_is_refused_naming_it():
    episode = '{"turbine_id": "wt01", "fault": "stuck", "start": 10, "end": 20}'
    text = f'{{"episodes": [{episode}], "false_alarms": []}}'
    assert parse_labels(text, "labels.json") == [Fault("wt01", "stuck", "unknown", 10.0, 20.0)]
    top = text.replace('"false_alarms": []', '"episodes": []')
    with pytest.raises(DataError, match=r"^labels\.json: duplicate key 'episodes'$"):
        parse_labels(top, "labels.json")
    nested = text.replace('"turbine_id": "wt01"', '"turbine_id": "wt02", "turbine_id": "wt01"')
    for parse in (parse_labels, parse_false_alarms):
        with pytest.raises(DataError, match=r"^labels\.json: duplicate key 'turbine_id'$"):
            parse(nested, "labels.json")
