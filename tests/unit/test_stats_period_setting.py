"""The local stack's `stats_period_s`: the detectors' statistics period reaches every deployment's detector
configuration (the demo's one-minute periods), the recipe default stays otherwise, and a bad value or two
disagreeing ones are refused naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nacelle.local.runtime.stack import LocalSettings, Stack
from shared.errors import ConfigurationError
from shared.usecases.rollout_components import deployment_components


def settings(tmp_path: Path, doc: dict[str, object]) -> LocalSettings:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return LocalSettings.load(path)


def detector_merge(s: LocalSettings) -> dict[str, object]:
    components = deployment_components(3, "1.0.0", s.detector_config())
    merged: dict[str, object] = json.loads(components["nacelle.detector"]["configurationUpdate"]["merge"])
    return merged


def test_the_stats_period_reaches_the_deployment_and_the_default_stays_the_recipes(tmp_path: Path) -> None:
    short = settings(tmp_path, {"stats_period_s": 60})
    assert detector_merge(short)["statsPeriodSeconds"] == 60
    assert Stack(tmp_path).rollout_deps().detector_configuration["statsPeriodSeconds"] == 60  # the stack's wiring
    assert detector_merge(short)["healthIntervalSeconds"] == 1  # the rest of detector_configuration stays
    assert "statsPeriodSeconds" not in detector_merge(settings(tmp_path, {}))  # the recipe's 1800 s applies


@pytest.mark.parametrize(("doc", "reason"), [
    ({"stats_period_s": 30}, "stats_period_s"),
    ({"stats_period_s": 60, "detector_configuration": {"statsPeriodSeconds": 120}}, "differ"),
])
def test_bad_or_conflicting_periods_are_refused_naming_the_file(tmp_path: Path, doc: dict[str, object],
                                                                reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason) as caught:
        settings(tmp_path, doc)
    assert str(tmp_path / "config.yaml") in str(caught.value)


def test_a_setting_given_twice_or_bad_yaml_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("stats_period_s: 60\nstats_period_s: 120\n")  # which one would hold? neither
    with pytest.raises(ConfigurationError, match=r"config\.yaml: not valid YAML: duplicate key 'stats_period_s'"):
        LocalSettings.load(path)
    path.write_text("stats_period_s: [60\n")
    with pytest.raises(ConfigurationError, match=r"config\.yaml: not valid YAML"):
        LocalSettings.load(path)
