"""Recipe semantics of the simulated nucleus: manifests, version ranges, dependencies, configuration, variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.edge import recipes
from nacelle.local.edge.recipes import DevicePaths, RecipeError, ResolutionError


def recipe(name: str, version: str, deps: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None,
           lifecycle: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"RecipeFormatVersion": "2020-01-25", "ComponentName": name, "ComponentVersion": version,
                           "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": lifecycle or {}}], **extra}
    if deps:
        out["ComponentDependencies"] = deps
    if defaults is not None:
        out["ComponentConfiguration"] = {"DefaultConfiguration": defaults}
    return out


def store(*items: dict[str, Any]) -> Any:
    by_id = {(r["ComponentName"], r["ComponentVersion"]): r for r in items}
    return lambda name, version: by_id.get((name, version))


# -- manifests ---------------------------------------------------------------------------------------------------
def test_first_matching_manifest_is_selected() -> None:
    r: dict[str, Any] = {"ComponentName": "c", "Manifests": [
        {"Platform": {"os": "windows"}, "Lifecycle": {"Run": "win"}},
        {"Platform": {"os": "linux", "architecture": "aarch64"}, "Lifecycle": {"Run": "arm"}},
        {"Platform": {"os": "/lin.*/", "architecture": "*"}, "Lifecycle": {"Run": "any linux"}},
        {"Lifecycle": {"Run": "anything"}}]}
    assert recipes.select_manifest(r, {"os": "linux", "architecture": "aarch64"})["Lifecycle"]["Run"] == "arm"
    assert recipes.select_manifest(r, {"os": "linux", "architecture": "amd64"})["Lifecycle"]["Run"] == "any linux"
    assert recipes.select_manifest(r, {"os": "darwin", "architecture": "amd64"})["Lifecycle"]["Run"] == "anything"


def test_no_matching_manifest_names_the_component() -> None:
    r = {"ComponentName": "only.windows", "Manifests": [{"Platform": {"os": "windows"}}]}
    with pytest.raises(RecipeError, match=r"only\.windows: no manifest matches"):
        recipes.select_manifest(r, {"os": "linux", "architecture": "amd64"})


def test_lifecycle_steps_are_normalised_and_manifest_wins() -> None:
    r: dict[str, Any] = {"ComponentName": "c", "Lifecycle": {"Run": "global"},
         "Manifests": [{"Lifecycle": {"Install": {"Script": "i", "Timeout": 5}, "Run": "local",
                                      "Setenv": {"A": 1}}}]}
    assert recipes.lifecycle(r, r["Manifests"][0]) == {"Install": {"Script": "i", "Timeout": 5},
                                                       "Run": {"Script": "local"}, "Setenv": {"A": "1"}}
    assert recipes.lifecycle(r, {}) == {"Run": {"Script": "global"}}


def test_artifacts_are_parsed_and_checked() -> None:
    r = {"ComponentName": "c"}
    arts = recipes.artifacts(r, {"Artifacts": [{"URI": "s3://b/components/c/1.0.0/x.zip", "Unarchive": "ZIP",
                                                "Digest": "abc=", "Algorithm": "SHA-256"}]})
    assert arts[0].bucket == "b" and arts[0].key == "components/c/1.0.0/x.zip" and arts[0].file_name == "x.zip"
    assert arts[0].unarchive == "ZIP"
    with pytest.raises(RecipeError, match=r"Artifacts\[0\]\.URI"):
        recipes.artifacts(r, {"Artifacts": [{"URI": "https://example.com/x"}]})
    with pytest.raises(RecipeError, match=r"Algorithm 'MD5'"):
        recipes.artifacts(r, {"Artifacts": [{"URI": "s3://b/k", "Digest": "x", "Algorithm": "MD5"}]})


def test_artifact_digest_is_base64_sha256() -> None:
    assert recipes.artifact_digest(b"") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


# -- version requirements ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("version", "requirement", "expected"), [
    ("1.0.0", ">=1.0.0", True), ("0.9.9", ">=1.0.0", False), ("7.0.0", ">=1.0.0 <8.0.0", True),
    ("8.0.0", ">=1.0.0 <8.0.0", False), ("1.4.2", "^1.2.0", True), ("2.0.0", "^1.2.0", False),
    ("0.2.5", "^0.2.1", True), ("0.3.0", "^0.2.1", False), ("1.2.9", "~1.2.3", True), ("1.3.0", "~1.2.3", False),
    ("1.2.7", "1.2.x", True), ("1.3.0", "1.2", False), ("3.1.4", "*", True), ("2.0.0", "1.0.0 || >=2.0.0", True),
    ("1.5.0", "1.0.0 || >=2.0.0", False), ("1.0.0", "= 1.0.0", True), ("1.2.0", "> 1.1", True),
    ("1.1.9", "<=1.1", True), ("1.2.0", "<=1.1", False),
])
def test_version_requirements(version: str, requirement: str, expected: bool) -> None:
    assert recipes.matches(version, requirement) is expected


def test_invalid_versions_are_errors() -> None:
    with pytest.raises(RecipeError, match="invalid semantic version"):
        recipes.matches("seven", ">=1.0.0")
    with pytest.raises(RecipeError, match="invalid version"):
        recipes.matches("1.0.0", ">=one")


# -- dependency resolution ---------------------------------------------------------------------------------------
MODEL_7 = recipe("nacelle.model", "7.0.0")
DETECTOR = recipe("nacelle.detector", "1.0.0",
                  deps={"nacelle.model": {"VersionRequirement": ">=1.0.0", "DependencyType": "SOFT"}})


def test_resolve_takes_the_deployment_and_checks_requirements() -> None:
    out = recipes.resolve({"nacelle.model": {"componentVersion": "7.0.0"},
                           "nacelle.detector": {"componentVersion": "1.0.0",
                                                "configurationUpdate": {"merge": '{"model": {"version": "7.0.0"}}'}}},
                          store(MODEL_7, DETECTOR))
    assert {n: c.version for n, c in out.items()} == {"nacelle.model": "7.0.0", "nacelle.detector": "1.0.0"}
    assert out["nacelle.detector"].update == {"merge": '{"model": {"version": "7.0.0"}}'}
    assert recipes.dependencies(out["nacelle.detector"].recipe)[0].hard is False
    assert recipes.start_order(out) == ["nacelle.model", "nacelle.detector"]


def test_a_dependency_missing_from_the_deployment_keeps_its_installed_version() -> None:
    out = recipes.resolve({"nacelle.detector": {"componentVersion": "1.0.0"}}, store(MODEL_7, DETECTOR),
                          installed={"nacelle.model": "7.0.0"})
    assert out["nacelle.model"].version == "7.0.0" and out["nacelle.model"].root is False
    with pytest.raises(ResolutionError, match=r"depends on nacelle\.model '>=1\.0\.0'.*does not include"):
        recipes.resolve({"nacelle.detector": {"componentVersion": "1.0.0"}}, store(MODEL_7, DETECTOR))


def test_an_unsatisfied_requirement_names_both_sides() -> None:
    strict = recipe("nacelle.detector", "2.0.0", deps={"nacelle.model": {"VersionRequirement": ">=8.0.0"}})
    with pytest.raises(ResolutionError, match=r"nacelle\.model 7\.0\.0 does not satisfy nacelle\.detector's "
                                              r"requirement '>=8\.0\.0'"):
        recipes.resolve({"nacelle.model": {"componentVersion": "7.0.0"},
                         "nacelle.detector": {"componentVersion": "2.0.0"}}, store(MODEL_7, strict))


def test_unknown_components_and_cycles_are_rejected() -> None:
    with pytest.raises(ResolutionError, match=r"component nope version 1\.0\.0 does not exist"):
        recipes.resolve({"nope": {"componentVersion": "1.0.0"}}, store())
    a = recipe("a", "1.0.0", deps={"b": {}})
    b = recipe("b", "1.0.0", deps={"a": {}})
    with pytest.raises(ResolutionError, match="dependency cycle"):
        recipes.resolve({"a": {"componentVersion": "1.0.0"}, "b": {"componentVersion": "1.0.0"}}, store(a, b))
    with pytest.raises(RecipeError, match="DependencyType 'WEAK'"):
        recipes.dependencies(recipe("c", "1.0.0", deps={"a": {"DependencyType": "WEAK"}}))


def test_the_token_exchange_service_is_provided_by_the_local_stack() -> None:
    tes = {"aws.greengrass.TokenExchangeService": {"VersionRequirement": ">=2.0.0 <3.0.0", "DependencyType": "SOFT"}}
    detector = recipe("nacelle.detector", "1.0.0", deps=tes)
    out = recipes.resolve({"nacelle.detector": {"componentVersion": "1.0.0"}}, store(detector))
    assert list(out) == ["nacelle.detector"]  # nothing to install: the capture gateway plays its role
    too_new = recipe("nacelle.detector", "1.0.0", deps={"aws.greengrass.TokenExchangeService":
                                                        {"VersionRequirement": ">=3.0.0"}})
    with pytest.raises(ResolutionError, match=r"requires aws\.greengrass\.TokenExchangeService '>=3\.0\.0'"):
        recipes.resolve({"nacelle.detector": {"componentVersion": "1.0.0"}}, store(too_new))


def test_dependency_type_defaults_to_hard() -> None:
    assert recipes.dependencies(recipe("c", "1.0.0", deps={"a": {"VersionRequirement": "^1.0.0"}}))[0].hard


# -- configuration -----------------------------------------------------------------------------------------------
DEFAULTS: dict[str, Any] = {"model": {"component": "nacelle.model", "version": ""}, "healthIntervalSeconds": 60,
            "topics": {"health": "turbines/{thing}/health"}}


def test_defaults_then_merge() -> None:
    r = recipe("d", "1.0.0", defaults=DEFAULTS)
    out = recipes.effective_configuration(r, {"merge": '{"model": {"version": "7.0.0"}, "extra": [1, 2]}'})
    assert out == {**DEFAULTS, "model": {"component": "nacelle.model", "version": "7.0.0"}, "extra": [1, 2]}
    assert DEFAULTS["model"]["version"] == ""  # the recipe is not mutated


def test_merge_applies_to_the_current_configuration_and_reset_restores_defaults() -> None:
    r = recipe("d", "1.0.0", defaults=DEFAULTS)
    current = {"model": {"component": "nacelle.model", "version": "7.0.0"}, "healthIntervalSeconds": 5}
    out = recipes.effective_configuration(r, {"merge": {"topics": {"health": "h"}}}, current)
    assert out["model"]["version"] == "7.0.0" and out["healthIntervalSeconds"] == 5
    assert out["topics"] == {"health": "h"}
    reset = recipes.effective_configuration(r, {"reset": ["/healthIntervalSeconds", "/extra"],
                                                "merge": '{"model": {"version": "8.0.0"}}'},
                                            {**current, "extra": True})
    assert reset["healthIntervalSeconds"] == 60 and "extra" not in reset and reset["model"]["version"] == "8.0.0"
    assert recipes.effective_configuration(r, {"reset": [""]}, current) == DEFAULTS


def test_a_bad_merge_is_a_recipe_error() -> None:
    r = recipe("d", "1.0.0", defaults=DEFAULTS)
    with pytest.raises(RecipeError, match=r"component d: configurationUpdate\.merge is not JSON"):
        recipes.effective_configuration(r, {"merge": "{nope"})
    with pytest.raises(RecipeError, match="must be a JSON object"):
        recipes.effective_configuration(r, {"merge": "[1]"})
    with pytest.raises(RecipeError, match="invalid JSON pointer"):
        recipes.effective_configuration(r, {"reset": ["model"]})


# -- variables ---------------------------------------------------------------------------------------------------
def test_interpolation_of_every_variable(tmp_path: Path) -> None:
    paths = DevicePaths(tmp_path / "devices" / "turbine-01", "turbine-01")
    view: dict[str, tuple[str, dict[str, Any]]] = {
        "nacelle.detector": ("1.0.0", {"venvRoot": "", "model": {"version": "7.0.0"}, "n": 3}),
        "nacelle.model": ("7.0.0", {"a/b": "x"})}
    deps = {"nacelle.detector": {"nacelle.model"}}
    script = ("{artifacts:path}|{artifacts:decompressedPath}|{work:path}|{kernel:rootPath}|{iot:thingName}|"
              "{configuration:/model/version}|{configuration:/model}|{configuration:/n}|{configuration:/venvRoot}|"
              "{nacelle.model:artifacts:decompressedPath}|{nacelle.model:configuration:/a~1b}|${HOME}|{x}")
    out = recipes.interpolate(script, "nacelle.detector", view, paths, deps).split("|")
    root = tmp_path / "devices" / "turbine-01"
    assert out == [str(root / "packages/artifacts/nacelle.detector/1.0.0"),
                   str(root / "packages/artifacts-unarchived/nacelle.detector/1.0.0"),
                   str(root / "work/nacelle.detector"), str(root), "turbine-01", "7.0.0",
                   json.dumps({"version": "7.0.0"}), "3", "",
                   str(root / "packages/artifacts-unarchived/nacelle.model/7.0.0"), "x", "${HOME}", "{x}"]


def test_interpolation_errors_name_the_component(tmp_path: Path) -> None:
    paths = DevicePaths(tmp_path, "t")
    view: dict[str, tuple[str, dict[str, Any]]] = {"a": ("1.0.0", {}), "b": ("1.0.0", {})}
    with pytest.raises(RecipeError, match=r"component a: \{b:artifacts:path\} names b, which is not one of its"):
        recipes.interpolate("{b:artifacts:path}", "a", view, paths, {"a": set()})
    with pytest.raises(RecipeError, match=r"component a: \{configuration:/missing\}: no such key"):
        recipes.interpolate("{configuration:/missing}", "a", view, paths)
    with pytest.raises(RecipeError, match=r"unknown recipe variable \{kernel:nope\}"):
        recipes.interpolate("{kernel:nope}", "a", view, paths)


def test_interpolated_lifecycle_of_the_real_detector_recipe(tmp_path: Path) -> None:
    import yaml

    detector = yaml.safe_load(Path("greengrass_components/nacelle.detector/recipe.yaml").read_text())
    config = recipes.effective_configuration(detector, {"merge": '{"model": {"version": "7.0.0"}}'})
    paths = DevicePaths(tmp_path / "devices" / "turbine-01", "turbine-01")
    life = recipes.interpolated_lifecycle("nacelle.detector", {"nacelle.detector": ("1.0.0", config),
                                                               "nacelle.model": ("7.0.0", {})},
                                          detector, paths, {"nacelle.detector": {"nacelle.model"}})
    assert "--thing 'turbine-01'" in life["Run"]["Script"]
    assert f"--models-root '{paths.root}/packages/artifacts-unarchived'" in life["Run"]["Script"]
    assert "{" not in life["Install"]["Script"].replace("${", "")
    # the model version lives in the configuration, not the lifecycle: a model update never restarts it
    other = recipes.effective_configuration(detector, {"merge": '{"model": {"version": "8.0.0"}}'})
    again = recipes.interpolated_lifecycle("nacelle.detector", {"nacelle.detector": ("1.0.0", other),
                                                                "nacelle.model": ("8.0.0", {})},
                                           detector, paths, {"nacelle.detector": {"nacelle.model"}})
    assert again == life
