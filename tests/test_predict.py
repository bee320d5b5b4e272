"""The multi-model predictor: one backbone pass per image, cached level switches, manifest loading and failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spinecad.inference.loading import LoadedModel
from spinecad.inference.manifest import ManifestError, read_manifest
from spinecad.inference.predictor import ENSEMBLE, Predictor
from spinecad.labels import LEVELS
from spinecad.models.preprocess import slice_to_tensor


@pytest.fixture()
def predictor(cpu_models) -> Predictor:
    loaded = [LoadedModel(m.config.backbone["name"], m.display_name, m, "memory") for m in cpu_models]
    return Predictor(loaded, device="cpu")


@pytest.fixture()
def image() -> np.ndarray:
    return np.random.default_rng(3).random((200, 180)).astype(np.float32)


class _CountingForward:
    """Counts backbone passes by wrapping the real ``features`` method (the model still runs)."""

    def __init__(self, models):
        self.calls = 0
        for model in models:
            original = model.backbone.features

            def counted(images, _original=original):
                self.calls += 1
                return _original(images)

            model.backbone.features = counted

    def restore(self, models):
        for model in models:
            del model.backbone.features


def test_level_switch_uses_cached_features_and_equals_a_full_forward(predictor, cpu_models, image):
    counter = _CountingForward(cpu_models)
    try:
        first = predictor.predict(image)
        assert counter.calls == 6
        again = predictor.predict(image)
        assert counter.calls == 6  # the second call ran no backbone
    finally:
        counter.restore(cpu_models)
    assert all(o.from_cache for o in again.outputs) and not any(o.from_cache for o in first.outputs)
    for model, output in zip(cpu_models, again.outputs, strict=True):
        batch = slice_to_tensor(image, model.data_config).repeat(len(LEVELS), 1, 1, 1)  # the slice once per level
        with torch.no_grad():  # one full forward (backbone and head) of every level
            probs = torch.softmax(model(batch, torch.arange(len(LEVELS))), dim=-1).numpy()
        np.testing.assert_allclose(output.probs, probs, atol=1e-5)


def test_ensemble_agreement_and_json_shape(predictor, image):
    prediction = predictor.predict(image)
    stacked = np.stack([o.probs for o in prediction.outputs])
    np.testing.assert_allclose(prediction.ensemble, stacked.mean(axis=0), atol=1e-7)
    payload = prediction.to_dict("L4/L5")
    assert payload["level"] == "L4/L5" and len(payload["models"]) == 6
    for values in payload["models"].values():
        assert abs(values["Normal/Mild"] + values["Moderate"] + values["Severe"] - 1) < 1e-4
        assert values["grade"] in ("Normal/Mild", "Moderate", "Severe") and values["latency_ms"] > 0
    assert set(payload["all_levels"]) == {*payload["models"], ENSEMBLE}
    assert all(set(grades) == set(LEVELS) for grades in payload["all_levels"].values())
    grades = [v["grade"] for v in payload["models"].values()]
    assert payload["ensemble"]["agreement"] == pytest.approx(grades.count(payload["ensemble"]["grade"]) / 6, abs=1e-3)
    json.dumps(payload)


def _write_demo_manifest(folder: Path, models, extra_entries=()) -> Path:
    entries = []
    for model in models:
        key = model.config.backbone["name"]
        model.save_pretrained(folder / key)
        entries.append({"key": key, "name": model.display_name, "path": key})
    manifest = {"format": "spinecad-manifest/1", "title": "test", "demo": True, "models": entries + list(extra_entries)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "manifest.json"


def test_from_manifest_serves_the_rest_when_one_fails(tmp_path, cpu_models, image):
    """(A Hub entry the offline cache cannot serve: test_model; the app's banner of a failure: test_app.)"""
    broken = {"key": "broken", "name": "Broken", "path": "nowhere"}
    path = _write_demo_manifest(tmp_path, cpu_models[:2], [broken])
    predictor = Predictor.from_manifest(path, device="cpu")
    assert [m.name for m in predictor.models] == [cpu_models[0].display_name, cpu_models[1].display_name]
    assert [(f.key, f.name) for f in predictor.failures] == [("broken", "Broken")]
    assert predictor.failures[0].reason == f"Broken: no checkpoint folder at {tmp_path / 'nowhere'}."
    assert predictor.manifest.title == "test" and predictor.manifest.demo is True
    assert len(predictor.predict(image).outputs) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        (json.dumps({"format": "other"}), "format"),
        (json.dumps({"format": "spinecad-manifest/1", "models": [{"key": "a", "name": "A"}]}), "needs a local"),
        (json.dumps({"format": "spinecad-manifest/1", "models": [{"key": "a", "name": "A", "repo_id": "o/r"}]}),
         "pinned"),
    ],
)
def test_bad_manifests_are_refused_with_a_message(tmp_path, content, message):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / "manifest.json")
