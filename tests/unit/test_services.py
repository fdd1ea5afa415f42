"""The Lambda handlers' boundary: captured AWS events parse and reach the use cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.data_arrival import app as data_arrival
from services.training_completed import app as training_completed
from shared.errors import ConfigurationError
from shared.gate import GatePolicy
from shared.usecases import state_keys as sk
from shared.usecases.registration import RegistrationDeps
from shared.usecases.retraining import ArrivalDeps, RetrainPolicy
from tests.fakes import (
    Clock,
    FakeTraining,
    MemoryRegistry,
    MemoryState,
    MemoryStore,
    RecordingEvents,
    RecordingNotifier,
)

EVENTS = Path(__file__).parents[1] / "events"


def load(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def arrival_deps(bucket: str) -> ArrivalDeps:
    clock = Clock()
    return ArrivalDeps(MemoryStore(bucket), MemoryState(), RecordingNotifier(), RecordingEvents(clock),
                       FakeTraining(), MemoryRegistry(), RetrainPolicy("nacelle-turbine"), clock)


def test_s3_event_key_is_url_decoded_and_the_file_is_read():
    deps = arrival_deps("nacelle-data-123456789012")
    key = "raw/wt-01/wt-01_20260301T09 (1).csv.gz"
    deps.store.put(key, b"")
    result = data_arrival.handle(load("s3_object_created.json"), deps)
    assert result["action"] == "quarantined" and result["key"] == key


def test_events_from_another_bucket_are_ignored():
    result = data_arrival.handle(load("s3_object_created.json"), arrival_deps("other-bucket"))
    assert result["action"] == "ignored"


def test_unexpected_detail_type_is_a_routing_error():
    with pytest.raises(ConfigurationError, match="unexpected event detail-type"):
        data_arrival.handle(load("training_job_failed.json"), arrival_deps("b"))


def registration_deps() -> RegistrationDeps:
    clock = Clock()
    deps = RegistrationDeps(MemoryStore("nacelle-data-123456789012"), MemoryState(), MemoryRegistry(),
                            RecordingNotifier(), RecordingEvents(clock), GatePolicy(), "nacelle-turbine", clock)
    deps.registry.ensure_group("nacelle-turbine")
    pk = sk.group_pk("nacelle-turbine")
    deps.state.put(pk, sk.JOB + "nacelle-0123456789abcdef-1",
                   {"dataset_hash": "0123456789abcdef", "status": "InProgress"})
    return deps


def test_training_failure_event_reaches_the_use_case():
    deps = registration_deps()
    result = training_completed.handle(load("training_job_failed.json"), deps)
    assert result["action"] == "failed"
    assert isinstance(deps.notifier, RecordingNotifier)
    assert "too little normal data" in deps.notifier.messages[0].message


def test_completed_event_reads_the_model_from_its_s3_uri():
    deps = registration_deps()
    result = training_completed.handle(load("training_job_completed.json"), deps)
    # the archive is missing from the (fake) bucket: the job is reported as failed, not lost
    assert result["action"] == "failed" and "model.tar.gz" in result["detail"]


@pytest.mark.parametrize("module", [data_arrival, training_completed])
def test_settings_name_every_variable_and_refuse_a_bad_one(module):
    env = dict.fromkeys(module.SETTINGS.env_vars(), "x")
    with pytest.raises(ConfigurationError):
        module.SETTINGS.from_env({**env, "NACELLE_QUIET_PERIOD_S": "soon", "NACELLE_GATE_MIN_EVENT_F1": "high"})
