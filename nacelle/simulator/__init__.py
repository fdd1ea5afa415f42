"""Physics-informed mini wind turbine simulator with labelled fault episodes.

physics: the normal turbine (a chunked stepper); faults: the fault library and schedule; drifts: lasting changes
that are not faults; generate: hourly gzip CSV datasets with labels.json; stream: the same samples as a live stream.
"""

from nacelle.simulator.faults import (
    FAULTS,
    SEVERITIES,
    FaultEpisode,
    default_schedule,
    parse_faults,
    schedule_for,
)
from nacelle.simulator.generate import GeneratedDataset, generate_dataset
from nacelle.simulator.physics import TurbineModel
from nacelle.simulator.stream import TurbineStream, paced

__all__ = [
    "FAULTS", "SEVERITIES", "FaultEpisode", "GeneratedDataset", "TurbineModel", "TurbineStream",
    "default_schedule", "generate_dataset", "paced", "parse_faults", "schedule_for",
]
