"""Two detectors as MQTT 5 clients of the real mosquitto broker (mutual TLS): a fault on one turbine gives an
episode on its anomalies topic only; a 5 s broker outage loses no anomaly message and keeps their order."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_outage import FAULTY, HEALTHY, run_outage
from nacelle.local.edge.broker import find_mosquitto

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed (apt-get install -y mosquitto)"),
]


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory, trained_model) -> Path:
    from training_jobs.compile import compile_bundle

    root = tmp_path_factory.mktemp("artifacts-unarchived")
    compile_bundle(trained_model.model_archive, root / "nacelle.model" / "1.0.0" / "bundle", None, 1,
                   warmup=2, runs=5)
    return root


def test_episode_on_one_turbine_survives_a_broker_outage(tmp_path: Path, models_root: Path) -> None:
    report = run_outage(tmp_path / "home", models_root, 5.0, echo=print)
    faulty, healthy = report.turbines[FAULTY], report.turbines[HEALTHY]
    print(f"\nanomalies {faulty.produced}, kinds {faulty.kinds}, duplicated {faulty.duplicated}, "
          f"max spool depth {report.max_spool_depth}, flush {report.flush_s:.2f}s, stats {report.stats}")
    assert faulty.produced > 0 and "open" in faulty.kinds and faulty.kinds[-1] == "close"
    assert faulty.lost == 0 and faulty.out_of_order == 0
    assert sorted(set(faulty.received)) == list(range(1, faulty.produced + 1))
    assert healthy.produced == 0 and healthy.received == []
    assert faulty.health > 0 and healthy.health > 0
    assert report.max_spool_depth > 0  # the outage really held messages back
    assert all(s["bad_messages"] == 0 and s["model_version"] == 1 for s in report.stats.values())
