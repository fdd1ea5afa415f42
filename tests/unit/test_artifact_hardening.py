"""Damaged or hostile model artefacts and hyperparameters are refused with a reason, never half-used."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from shared.errors import BundleError, ConfigurationError
from shared.ml import bundle
from shared.ml.bundle import EVALUATION_FILE, MANIFEST_FILE, WEIGHTS_FILE, Manifest, read_tar_documents
from shared.ml.episodes import EpisodeRule
from shared.ml.metrics import Allowance
from tests.unit.test_model_io import SPEC, manifest_for, quiet, windows
from training_jobs import train
from training_jobs.bundle_io import load_model, pack_model_dir, read_manifest_from_tar, save_model_dir
from training_jobs.compile import check_finite_scores, compile_bundle
from training_jobs.evaluation import EvalSet
from training_jobs.fit import Fitted, fit_pca
from training_jobs.hyperparameters import Hyperparameters


@pytest.fixture(scope="module")
def pca() -> Fitted:
    return fit_pca(SPEC, windows(300, 1), Hyperparameters(seed=3), quiet)


@pytest.fixture(scope="module")
def model_dir(pca: Fitted, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "model"
    save_model_dir(out, pca.scorer, manifest_for(pca.scorer))
    (out / EVALUATION_FILE).write_text(json.dumps({"candidate": {}}))
    return out


def archive(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def files(model_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in model_dir.iterdir()}


# -- A model that scores NaN is not compiled ------------------------------------------------------
def test_a_model_scoring_nan_fails_the_compile_and_leaves_no_bundle(model_dir: Path, tmp_path: Path):
    damaged = tmp_path / "model"
    shutil.copytree(model_dir, damaged)
    state = torch.load(damaged / WEIGHTS_FILE, weights_only=True)
    damage = [k for k, v in state.items() if v.is_floating_point() and k != "prep.partner_sign"]  # checked at load
    torch.save({**state, **{k: torch.full_like(state[k], float("nan")) for k in damage}}, damaged / WEIGHTS_FILE)
    packed = pack_model_dir(damaged, tmp_path / "model.tar.gz")
    with pytest.raises(BundleError, match=r"256 of 256 windows without missing samples as NaN"):
        compile_bundle(packed, tmp_path / "edge", None, 1, warmup=1, runs=2)
    assert not (tmp_path / "edge" / "model.onnx").exists()
    assert not (tmp_path / "edge" / MANIFEST_FILE).exists()


def test_nan_scores_are_allowed_only_on_windows_with_missing_samples():
    x = np.ones((3, 2, 4), dtype=np.float32)
    x[2, 0, 1] = np.nan
    finite = np.array([1.0, 2.0, np.nan])
    check_finite_scores(Path("model.onnx"), x, finite, finite)  # the NaN is on the window missing a sample
    check_finite_scores(Path("model.onnx"), x, finite, np.array([1.0, np.inf, 0.0]))  # overflow: a huge reading
    with pytest.raises(BundleError, match=r"1 of 2 windows .* \(PyTorch: 0, ONNX Runtime: 1\)"):
        check_finite_scores(Path("model.onnx"), x, finite, np.array([1.0, np.nan, 0.0]))


# -- A damaged champion is "not comparable", not a failed job ------------------------------------
def _refused_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(Path("x")))  # any object weights_only refuses


@pytest.mark.parametrize("write, match", [
    (lambda p: p.write_bytes(b""), "empty or cut short"),
    (lambda p: p.write_bytes(b"\x80\x04not torch"), "not a PyTorch weights file"),
    (_refused_pickle, "not a PyTorch weights file"),
    (lambda p: torch.save([1, 2], p), "not a mapping of names to tensors"),
    (lambda p: torch.save({"prep.mean": 1}, p), "not a mapping of names to tensors"),
    (lambda p: torch.save({"prep.mean": torch.zeros(7)}, p), "do not fit the manifest's model"),
])
def test_unreadable_weights_are_a_bundle_error_with_a_short_reason(model_dir: Path, tmp_path: Path, write, match):
    damaged = tmp_path / "model"
    shutil.copytree(model_dir, damaged)
    write(damaged / WEIGHTS_FILE)
    with pytest.raises(BundleError, match=match) as caught:
        load_model(pack_model_dir(damaged, tmp_path / "model.tar.gz"))
    assert "weights_only" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_damaged_champion_is_skipped_by_the_training_job(model_dir: Path, tmp_path: Path):
    champion = tmp_path / "champion"
    shutil.copytree(model_dir, tmp_path / "model")
    (tmp_path / "model" / WEIGHTS_FILE).write_bytes(b"")
    pack_model_dir(tmp_path / "model", champion / "model.tar.gz")
    assert train.score_champion(champion, cast(EvalSet, None), SPEC, Allowance.of(SPEC), {}) is None


# -- Archives: only the expected members, within their limits, never twice ------------------------
def test_an_archive_packed_with_dot_slash_names_and_a_root_entry_still_loads(model_dir: Path, tmp_path: Path):
    packed = tmp_path / "model.tar.gz"
    with tarfile.open(packed, "w:gz") as tar:  # as `tar czf model.tar.gz -C model .` writes it
        tar.add(model_dir, arcname=".")
    assert load_model(packed).manifest.threshold == 1.5
    assert set(read_tar_documents(packed.read_bytes())) == {MANIFEST_FILE, EVALUATION_FILE}


@pytest.mark.parametrize("extra, match", [
    (("padding.bin", b"\0" * 100), "unexpected member 'padding.bin'"),
    (("../escape.txt", b"x"), "unexpected member '../escape.txt'"),
    (("./manifest.json", b"{}"), "manifest.json appears more than once"),
    ((MANIFEST_FILE, b"{}"), "manifest.json appears more than once"),
])
def test_unexpected_or_repeated_members_are_refused_by_every_reader(model_dir: Path, tmp_path: Path, extra, match):
    packed = archive(tmp_path / "model.tar.gz", [*files(model_dir).items(), extra])
    for read in (load_model, read_manifest_from_tar, lambda p: read_tar_documents(p.read_bytes())):
        with pytest.raises(BundleError, match=match):
            read(packed)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_a_link_in_place_of_a_document_is_refused(model_dir: Path, tmp_path: Path):
    packed = tmp_path / "model.tar.gz"
    with tarfile.open(packed, "w:gz") as tar:
        link = tarfile.TarInfo(MANIFEST_FILE)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        tar.add(model_dir / WEIGHTS_FILE, arcname=WEIGHTS_FILE)
    with pytest.raises(BundleError, match=r"'manifest\.json' is not a regular file"):
        load_model(packed)


def test_members_larger_than_their_limit_are_refused_before_they_are_written(model_dir: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch):
    members = files(model_dir)
    monkeypatch.setitem(bundle.ARCHIVE_LIMITS, MANIFEST_FILE, len(members[MANIFEST_FILE]) - 1)
    packed = archive(tmp_path / "model.tar.gz", list(members.items()))
    for read in (load_model, lambda p: read_tar_documents(p.read_bytes())):
        with pytest.raises(BundleError, match=r"'manifest\.json' is larger than"):
            read(packed)


def test_the_size_limit_holds_while_reading_whatever_the_header_says(tmp_path: Path):
    packed = archive(tmp_path / "a.tar.gz", [(MANIFEST_FILE, b"x" * 100)])
    out = io.BytesIO()
    with tarfile.open(packed, "r:gz") as tar:
        info = tar.getmember(MANIFEST_FILE)
        with pytest.raises(BundleError, match="larger than 10 bytes"):
            bundle._copy_member(tar, info, out, 10, "a.tar.gz")
    assert out.getvalue() == b""


def test_the_limits_cover_exactly_what_the_training_job_writes():
    assert set(bundle.ARCHIVE_LIMITS) == {MANIFEST_FILE, WEIGHTS_FILE, EVALUATION_FILE}
    assert bundle.ARCHIVE_LIMITS[MANIFEST_FILE] <= 8 << 20  # the registration Lambda reads it into memory


# -- Hyperparameters as SageMaker passes them ----------------------------------------------------
@pytest.mark.parametrize("key, value, fragment", [
    ("learning_rate", "NaN", r"learning_rate='NaN' must be a finite number in \(0, 1\]"),
    ("learning_rate", float("inf"), r"learning_rate=inf must be a finite number"),
    ("val_fraction", float("nan"), r"val_fraction=nan must be a finite number in \(0, 0\.8\)"),
    ("threshold_margin", float("nan"), r"threshold_margin=nan must be a finite number in \[0, 100\]"),
    ("dropout", "NaN", r"dropout='NaN' must be a finite number in \[0, 1\)"),
    ("dropout", 7, r"dropout=7\.0 must lie in \[0, 1\)"),
    ("epochs", 2.9, r"epochs=2\.9 must be a whole number in \[0, 10000\]"),
    ("epochs", "2.9", r"epochs='2\.9' must be a whole number"),
    ("epochs", True, r"epochs=True must be a whole number"),
    ("epochs", 1e9, r"epochs=1000000000 must lie in \[0, 10000\]"),
    ("train_steps", 10**12, r"train_steps=1000000000000 must lie in \[1, 1000000\]"),
    ("channels", 0, r"channels=0 must lie in \[1, 1024\]"),
    ("latent", -3, r"latent=-3 must lie in \[1, 1024\]"),
    ("max_train_windows", 0, r"max_train_windows=0 must lie in \[1, 1000000\]"),
    ("seed", -1, r"seed=-1 must lie in \[0, 4294967295\]"),
    ("injection_seed", 2**40, r"injection_seed=\d+ must lie in \[0, 4294967295\]"),
    ("label_margin_s", 1e9, r"label_margin_s=1000000000\.0 must lie in \(-inf, 86400\]"),
])
def test_hyperparameters_must_be_finite_whole_and_in_range(key: str, value: Any, fragment: str):
    with pytest.raises(ConfigurationError, match=fragment):
        Hyperparameters.from_mapping({key: value})


def test_hyperparameters_in_range_keep_their_types():
    hp = Hyperparameters.from_mapping({"epochs": "12", "batch_size": 64.0, "learning_rate": "1e-3",
                                       "dropout": 0, "label_margin_s": -1, "threshold_margin": "1.2"})
    assert (hp.epochs, hp.batch_size, hp.learning_rate, hp.dropout) == (12, 64, 1e-3, 0.0)
    assert isinstance(hp.batch_size, int) and isinstance(hp.dropout, float)
    assert (hp.label_margin_s, hp.threshold_margin) == (-1.0, 1.2)


# -- The manifest's episode rule ----------------------------------------------------------------
@pytest.mark.parametrize("field, value, fragment", [
    ("max_silence_s", -1.0, "needs a finite max_silence_s > 0, got max_silence_s=-1.0"),
    ("max_silence_s", float("nan"), "max_silence_s=nan"),
    ("update_interval_s", 0, "needs a finite update_interval_s > 0, got update_interval_s=0"),
    ("update_interval_s", -5.0, "update_interval_s"),
    ("update_interval_s", float("inf"), "update_interval_s"),
    ("missing_tolerance", float("nan"), "missing_tolerance"),
    ("k", 2.5, "k must be a whole number"),
    ("n", "5", "n must be a whole number"),
    ("m", True, "m must be a whole number"),
])
def test_the_manifest_episode_rule_is_checked_field_by_field(pca: Fitted, field: str, value: Any, fragment: str):
    raw = manifest_for(pca.scorer)
    raw["episode_rule"][field] = value
    with pytest.raises(BundleError, match=fragment):
        Manifest.from_dict(raw)
    with pytest.raises(ValueError, match=fragment):  # and the rule itself, as the edge detector builds it
        EpisodeRule(**raw["episode_rule"])
