"""The model component is built only from artifacts that match the compiled manifest: S3 delivers a compile's files
in no set order, and a component version made of another compile's model.onnx would be immutable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.components import MODEL_COMPONENT, model_bundle_zip
from shared.errors import BundleError, Conflict
from tests.unit.test_rollout import CANARY, GROUP, Harness

BUNDLE_KEY = f"components/{MODEL_COMPONENT}/1.0.0/bundle.zip"


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_a_manifest_ahead_of_its_model_is_retried_and_creates_nothing_until_the_model_lands(h: Harness) -> None:
    key = h.compile(1, onnx=b"the model this compile exported")
    model_key = f"compiled/{GROUP}/1/model.onnx"
    h.deps.store.put(model_key, b"an earlier compile's model")  # still there when the manifest's event comes
    for _ in range(2):  # every redelivery until the right bytes land: an error to retry, never a Conflict
        with pytest.raises(BundleError, match=r"model\.onnx") as raised:
            h.deliver_manifest(key)
        assert not isinstance(raised.value, Conflict)
    assert h.gg.get_component(MODEL_COMPONENT, "1.0.0") is None and not h.deps.store.exists(BUNDLE_KEY)
    assert h.deployments(CANARY) == [] and h.alerts() == []
    h.deps.store.put(model_key, b"the model this compile exported")
    assert h.deliver_manifest(key)["action"] == "deployed"
    assert h.gg.get_component(MODEL_COMPONENT, "1.0.0") is not None and len(h.deployments(CANARY)) == 1


@pytest.mark.parametrize("entry", [{"sha256": "0" * 64, "size": 4}, {"size": 4}, {}, "x"])
def test_the_bundle_zip_checks_every_artifact_against_the_manifest(entry: object) -> None:
    manifest = json.dumps({"edge": {"artifacts": {"model.onnx": entry}}}).encode()
    with pytest.raises(BundleError, match=r"model\.onnx"):
        model_bundle_zip(manifest, lambda name: b"onnx")
