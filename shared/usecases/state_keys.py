"""Where each use case keeps its state in the single state table (pk = group, sk = kind#id)."""

from __future__ import annotations


def group_pk(group: str) -> str:
    return f"group#{group}"


FILE = "file#"  # one per raw object: status, sha256, duration, accepted_at
DATASET = "dataset#"  # one per dataset hash: manifest key, attempts, status
JOB = "job#"  # one per training job: dataset, attempt, status, model version
ACTIVE_JOB = "active-job"  # the group's running job (a conditional write makes it exclusive)
ARRIVALS = "arrivals"  # last_arrival_at, for debouncing
WATERMARK = "watermark"  # accepted_at of the newest file that a completed job trained on
DRIFT_RETRAIN = "drift-retrain#v"  # one per model version: drift_monitor's retraining request, the job that took it
