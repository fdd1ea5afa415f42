"""The compile job: model.tar.gz -> model.onnx + manifest.json, equivalence, latency, verify."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from shared.errors import BundleError
from shared.ml.bundle import MANIFEST_FILE
from shared.ml.edge_bundle import MODEL_FILE, EdgeManifest, sha256_file, verify
from shared.version import code_version
from training_jobs import compile as compile_module
from training_jobs.bundle_io import LoadedModel, load_model, read_manifest_from_tar
from training_jobs.compile import (
    FAILURE_FILE,
    PROCESSING_ROOT_ENV,
    check_equivalence,
    compile_bundle,
    main,
    nan_variants,
    synthetic_windows,
)
from training_jobs.onnx_export import export_onnx, ort_session

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def loaded(trained_model) -> LoadedModel:
    return load_model(trained_model.model_archive)


@pytest.fixture(scope="module")
def edge_dir(trained_model, small_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("edge") / "bundle"
    compile_bundle(trained_model.model_archive, out, small_dataset, 7, atol=1e-4, rtol=1e-3)
    return out


@pytest.fixture(scope="module")
def edge(edge_dir) -> dict[str, Any]:
    return dict(json.loads((edge_dir / MANIFEST_FILE).read_text()))


def copy_bundle(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_compile_writes_onnx_and_a_verifiable_manifest(trained_model, edge_dir, edge):
    assert sorted(p.name for p in edge_dir.iterdir()) == [MANIFEST_FILE, MODEL_FILE]
    checked = verify(edge_dir)
    assert checked.model_version == 7 and checked.input_name == "windows"
    section = edge["edge"]
    assert section["format_version"] == 1
    assert section["artifacts"][MODEL_FILE] == {"sha256": sha256_file(edge_dir / MODEL_FILE),
                                                "size": (edge_dir / MODEL_FILE).stat().st_size}
    assert section["source"] == {"model_data": str(trained_model.model_archive),
                                 "sha256": sha256_file(trained_model.model_archive)}
    assert section["code_version"] == code_version() and section["compiled_at"]
    assert section["onnx"]["opset"] == 17 and section["onnx"]["exporter"]["dynamo"] is False
    width = read_manifest_from_tar(trained_model.model_archive)["model"]["inputs"]["windows"][2]
    assert section["onnx"]["inputs"] == {"windows": ["batch", 6, width]}
    assert section["onnx"]["outputs"] == {"score": ["batch"], "contributions": ["batch", 6], "missing": ["batch", 6]}
    # The whole training manifest travels unchanged.
    training = read_manifest_from_tar(trained_model.model_archive)
    assert {k: edge[k] for k in training} == training


def test_equivalence_report_on_validation_data(edge):
    report = edge["edge"]["equivalence"]
    assert report["passed"] is True and report["source"] == "validation"
    assert report["atol"] == 1e-4 and report["rtol"] == 1e-3
    assert report["windows"] > 100 and report["nan_windows"] > 0
    assert set(report["outputs"]) == {"score", "contributions", "missing"}
    for name in ("score", "contributions", "missing"):
        # Scores of far-off synthetic windows are large, so the absolute difference is judged
        # relative to them (numpy.isclose), never infinite (NaN on one side only).
        assert report["outputs"][name]["beyond_tolerance"] == 0
        assert np.isfinite(report["outputs"][name]["max_abs_diff"])
    assert report["outputs"]["missing"]["max_abs_diff"] == 0
    assert report["flags"]["agree"] is True and report["flags"]["mismatches"] == 0


def test_latency_numbers_are_present_and_positive(edge):
    latency = edge["edge"]["latency"]
    assert latency["batch"] == 1 and latency["threads"] == 1 and latency["runs"] > 0
    for runtime in ("onnxruntime", "torch_eager"):
        assert all(latency[runtime][k] > 0 for k in ("p50_us", "p99_us", "mean_us"))


def test_onnx_and_torch_agree_on_windows_with_nan(edge_dir, loaded):
    rng = np.random.default_rng(5)
    x = nan_variants(synthetic_windows(loaded.manifest, rng)[:16], rng)
    x[0] = np.nan  # the first row of the block variants: now entirely missing too
    score, contributions, missing = ort_session(edge_dir / MODEL_FILE).run(None, {"windows": x})
    with torch.no_grad():
        torch_score, torch_contributions, torch_missing = (t.numpy() for t in loaded.scorer(torch.from_numpy(x)))
    assert np.isnan(x).any(axis=(1, 2)).all()
    assert score.shape == (len(x),) and contributions.shape == missing.shape == (len(x), 6)
    assert np.isfinite(score).all() and np.isfinite(contributions).all() and (contributions >= 0).all()
    np.testing.assert_allclose(score, torch_score, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(contributions, torch_contributions, atol=1e-5, rtol=1e-4)
    # the score is their power mean: score**4 is their sum
    np.testing.assert_allclose(score.astype(np.float64) ** 4, contributions.astype(np.float64).sum(axis=1), rtol=1e-4)
    np.testing.assert_array_equal(missing, torch_missing)
    assert score[0] == 0 and (contributions[0] == 0).all() and (missing[0] == 1).all()


def perturb_one_weight(src: Path, dest: Path) -> None:
    """Add 0.5 to one weight of the first convolution."""
    model = onnx.load(str(src))
    init = next(i for i in model.graph.initializer if i.name.endswith("encoder.0.weight"))
    weights = numpy_helper.to_array(init).copy()
    weights.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    onnx.save(model, str(dest))


def test_a_perturbed_onnx_weight_fails_the_equivalence_check(edge_dir, loaded, tmp_path):
    perturbed = tmp_path / MODEL_FILE
    perturb_one_weight(edge_dir / MODEL_FILE, perturbed)
    x = synthetic_windows(loaded.manifest, np.random.default_rng(0))
    report = check_equivalence(edge_dir / MODEL_FILE, loaded.scorer, x, loaded.manifest.threshold)  # the original
    assert report["passed"] and report["flags"]["agree"]
    with pytest.raises(BundleError, match="disagree"):
        check_equivalence(perturbed, loaded.scorer, x, loaded.manifest.threshold, atol=1e-4, rtol=1e-3)


def test_a_perturbed_export_fails_the_compile_and_leaves_no_bundle(trained_model, tmp_path, monkeypatch):
    def export_then_perturb(scoring, n_features, length, path, opset=17):
        export_onnx(scoring, n_features, length, path, opset)
        perturb_one_weight(path, path)

    monkeypatch.setattr(compile_module, "export_onnx", export_then_perturb)
    out = tmp_path / "edge"
    with pytest.raises(BundleError, match="disagree"):
        compile_bundle(trained_model.model_archive, out, None, None, atol=1e-4, rtol=1e-3)
    assert list(out.iterdir()) == []  # neither model.onnx nor manifest.json


def test_verify_refuses_a_tampered_model(edge_dir, tmp_path):
    bundle = copy_bundle(edge_dir, tmp_path / "bundle")
    expected = sha256_file(bundle / MODEL_FILE)
    data = bytearray((bundle / MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    (bundle / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError) as caught:
        verify(bundle)
    message = str(caught.value)
    assert MODEL_FILE in message and expected in message and sha256_file(bundle / MODEL_FILE) in message


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: m["edge"].update(format_version=2), "edge format version 2"),
    (lambda m: m.update(format_version=99), "bundle format version 99"),
    (lambda m: m["edge"]["equivalence"].update(passed=False), "equivalence"),
    (lambda m: m["edge"]["artifacts"].update({"../x": m["edge"]["artifacts"][MODEL_FILE]}), "plain file name"),
    (lambda m: m["episode_rule"].update(release_ratio=0), "0 < release_ratio <= 1"),  # would never close
    (lambda m: m["episode_rule"].update(release_ratio="0.6"), "malformed manifest"),
    (lambda m: m["episode_rule"].update(hold_ratio=0.6), "malformed manifest"),  # a key this detector cannot apply
])
def test_verify_refuses_unknown_versions_and_malformed_manifests(edge_dir, tmp_path, edit, match):
    bundle = copy_bundle(edge_dir, tmp_path / "bundle")
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    edit(raw)
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=match):
        verify(bundle)
    with pytest.raises(BundleError, match=match):
        EdgeManifest.from_dict(raw)


def test_processing_contract_as_a_subprocess(trained_model, tmp_path):
    root = tmp_path / "processing"
    (root / "input" / "model").mkdir(parents=True)
    shutil.copy2(trained_model.model_archive, root / "input" / "model" / "model.tar.gz")
    env = {**os.environ, PROCESSING_ROOT_ENV: str(root),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "training_jobs.compile", "--model-version", "2"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = root / "output"
    manifest = verify(out)
    assert manifest.model_version == 2 and not (out / FAILURE_FILE).exists()
    assert manifest.edge["equivalence"]["source"] == "synthetic"  # no validation input was given
    assert manifest.edge["equivalence"]["nan_windows"] > 0


def test_processing_contract_writes_failure_on_a_corrupt_archive(tmp_path, monkeypatch):
    root = tmp_path / "processing"
    (root / "input" / "model").mkdir(parents=True)
    (root / "input" / "model" / "model.tar.gz").write_bytes(b"not a gzip archive")
    monkeypatch.setenv(PROCESSING_ROOT_ENV, str(root))
    assert main([]) == 1
    reason = (root / "output" / FAILURE_FILE).read_text()
    assert "model.tar.gz" in reason and "not a readable" in reason
    assert not (root / "output" / MANIFEST_FILE).exists()


def test_the_pca_family_compiles_with_the_same_equivalence_check(trained_pca, tmp_path):
    raw = compile_bundle(trained_pca.model_archive, tmp_path / "pca", None, 3, warmup=5, runs=20)
    assert raw["model"]["family"] == "pca" and verify(tmp_path / "pca").model_version == 3
    report = raw["edge"]["equivalence"]
    assert report["passed"] is True and report["source"] == "synthetic" and report["nan_windows"] > 0
    assert set(report["outputs"]) == {"score", "contributions", "missing"}
    assert all(o["beyond_tolerance"] == 0 for o in report["outputs"].values())
    assert raw["edge"]["onnx"]["outputs"]["score"] == ["batch"]
