"""Save and load the model bundle with its torch weights; pack it the way SageMaker does."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.errors import BundleError
from shared.ml.bundle import MANIFEST_FILE, WEIGHTS_FILE, Manifest, read_manifest
from training_jobs.model import Scorer, empty_scorer


@dataclass
class LoadedModel:
    manifest: Manifest
    scorer: Scorer


def build_scorer(manifest: Manifest) -> Scorer:
    """A scorer of the manifest's family and shapes, its values still to be loaded."""
    g = manifest.spec.geometry
    try:
        return empty_scorer(manifest.raw["model"], manifest.spec.drift_mask, g.context_inputs, g.length)
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
    try:
        state = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        for key, placeholder in scorer.state_dict().items():  # weights saved before the frozen-sensor check
            if key.endswith("prep.frozen_check") and key not in state:
                state[key] = torch.zeros_like(placeholder)  # its check stays off, as it was trained
        scorer.load_state_dict(state)
    except (OSError, RuntimeError, KeyError) as exc:
        raise BundleError(f"{model_dir / WEIGHTS_FILE}: cannot load weights: {exc}") from exc
    scorer.eval()
    return LoadedModel(manifest, scorer)


def load_model(path: Path) -> LoadedModel:
    """A model directory, or a model.tar.gz as SageMaker writes it."""
    if path.is_dir():
        return load_model_dir(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such model (expected model.tar.gz or a model directory)")
    with tempfile.TemporaryDirectory() as tmp:
        extract_tar(path, Path(tmp))
        return load_model_dir(Path(tmp))


def extract_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{archive}: not a readable model.tar.gz: {exc}") from exc


def pack_model_dir(model_dir: Path, archive: Path) -> Path:
    """model.tar.gz with the model directory's files at its root, as SageMaker packs SM_MODEL_DIR."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(model_dir.rglob("*")):
            if item.is_file():
                tar.add(item, arcname=item.relative_to(model_dir).as_posix())
    return archive


def read_manifest_from_tar(archive: Path) -> dict[str, Any]:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.extractfile(MANIFEST_FILE)
            if member is None:
                raise BundleError(f"{archive}: no {MANIFEST_FILE} inside")
            return dict(json.load(io.TextIOWrapper(member, encoding="utf-8")))
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise BundleError(f"{archive}: cannot read {MANIFEST_FILE}: {exc}") from exc
