"""Save and load the model bundle with its torch weights; pack it the way SageMaker does."""

from __future__ import annotations

import pickle
import tarfile
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.errors import BundleError
from shared.ml.bundle import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Manifest,
    open_archive,
    read_manifest,
    read_tar_documents,
    unpack_archive,
)
from training_jobs.model import Scorer, empty_scorer


@dataclass
class LoadedModel:
    manifest: Manifest
    scorer: Scorer


def build_scorer(manifest: Manifest) -> Scorer:
    """A scorer of the manifest's family and shapes, its values still to be loaded."""
    g = manifest.spec.geometry
    try:
        return empty_scorer(manifest.raw["model"], manifest.spec.drift_mask, g.context_inputs, g.length,
                            manifest.spec.hidden_inputs, manifest.spec.alarm_mask)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"manifest model section {manifest.raw['model']!r}: {exc}") from exc


def save_model_dir(model_dir: Path, scorer: Scorer, manifest: dict[str, Any]) -> Manifest:
    """Write weights then the manifest (validated on the way out)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    checked = Manifest.from_dict(manifest, str(model_dir / MANIFEST_FILE))
    torch.save(scorer.state_dict(), model_dir / WEIGHTS_FILE)
    (model_dir / MANIFEST_FILE).write_text(checked.to_json())
    return checked


def load_model_dir(model_dir: Path) -> LoadedModel:
    manifest = read_manifest(model_dir)
    scorer = build_scorer(manifest)
    path = model_dir / WEIGHTS_FILE
    state = read_weights(path)
    for key, placeholder in scorer.state_dict().items():  # weights saved before these buffers existed
        if key.endswith("prep.frozen_check") and key not in state:
            state[key] = torch.zeros_like(placeholder)  # its check stays off, as it was trained
        if key.endswith("prep.glitch_limit") and key not in state:
            state[key] = torch.full_like(placeholder, float("inf"))  # no glitch filter, as it was trained
        if key == "tail_power" and key not in state:
            state[key] = torch.ones_like(placeholder)  # errors in their 99th percentile, as it was trained
        if key.endswith("prep.partner") and key not in state:
            state[key] = torch.arange(placeholder.numel())
        if key.endswith("prep.partner_sign") and key not in state:
            state[key] = torch.zeros_like(placeholder)  # no look behind a difference, as it was trained
    try:
        scorer.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"{path}: the weights do not fit the manifest's model: {_short(exc)}") from exc
    _check_hidden_inputs(path, scorer)
    scorer.eval()
    return LoadedModel(manifest, scorer)


def _check_hidden_inputs(path: Path, scorer: Scorer) -> None:
    """The frozen-sensor check's pairs must name features and add or subtract them (else scoring fails later)."""
    partner, sign = scorer.prep.partner, scorer.prep.partner_sign.flatten()
    n = int(sign.numel())
    if bool(((partner < 0) | (partner >= n)).any()) or not bool(torch.isin(sign, torch.tensor([-1.0, 0.0, 1.0])).all()):
        raise BundleError(f"{path}: prep.partner must index the {n} features and prep.partner_sign hold -1, 0 or 1")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file; BundleError with a short reason for anything else."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own message suggests loading it without weights_only
        raise BundleError(f"{path}: not a PyTorch weights file of plain tensors") from exc
    except EOFError as exc:
        raise BundleError(f"{path}: the weights file is empty or cut short") from exc
    except Exception as exc:  # torch.load reports damaged input in many ways (RuntimeError, ValueError, ...)
        raise BundleError(f"{path}: cannot read the weights: {_short(exc)}") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise BundleError(f"{path}: the weights are not a mapping of names to tensors")
    return state


def _short(exc: BaseException, limit: int = 300) -> str:
    """One line of an exception's message (torch's span several)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_model(path: Path) -> LoadedModel:
    """A model directory, or a model.tar.gz as SageMaker writes it."""
    if path.is_dir():
        return load_model_dir(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such model (expected model.tar.gz or a model directory)")
    with tempfile.TemporaryDirectory() as tmp:
        extract_tar(path, Path(tmp))
        try:
            return load_model_dir(Path(tmp))
        except BundleError as exc:  # named after the archive, not the temporary directory it was unpacked to
            raise BundleError(f"{path}: {str(exc).removeprefix(f'{tmp}/')}") from exc


def extract_tar(archive: Path, dest: Path) -> None:
    """The archive's members into `dest`, one by one, under the names and limits unpack_archive allows."""
    with ExitStack() as files, open_archive(archive) as fileobj:
        unpack_archive(fileobj, lambda name: files.enter_context((dest / name).open("wb")), str(archive))


def pack_model_dir(model_dir: Path, archive: Path) -> Path:
    """model.tar.gz with the model directory's files at its root, as SageMaker packs SM_MODEL_DIR."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(model_dir.rglob("*")):
            if item.is_file():
                tar.add(item, arcname=item.relative_to(model_dir).as_posix())
    return archive


def read_manifest_from_tar(archive: Path) -> dict[str, Any]:
    return read_tar_documents(archive, (MANIFEST_FILE,), str(archive))[MANIFEST_FILE]
