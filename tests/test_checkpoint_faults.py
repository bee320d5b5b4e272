"""Broken checkpoints: each is refused with a message naming the model, and the app serves the others and says
which are missing.

Four faults beside the six good fixture models: a truncated model.safetensors, a config.json naming a backbone
architecture that does not exist, a config whose head widths do not match the weights, and a Hub entry whose pinned
revision is not in the local cache while the Hub is offline. Real files, the real loader, the real app.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import huggingface_hub
import pytest
from gradio_client import Client, handle_file

from spinecad.examples import DEFAULT_EXAMPLES_DIR
from spinecad.loading import load_manifest_models
from spinecad.manifest import Manifest, ModelEntry, read_manifest, write_manifest
from spinecad.model import CheckpointError, SpineCADModel
from tests.app_fixture import running_app, write_fixture_set

GOOD_NAMES = ["ViT-B/16", "Swin-B", "BEiT-B", "EfficientNetV2-M", "ResNet-152", "ConvNeXt-B"]
# key -> (display name, a phrase the refusal must contain)
FAULTS = {
    "corrupt": ("ResNet-152 (corrupt weights)", "model.safetensors is truncated or corrupt"),
    "unknown-backbone": ("ConvNeXt-B (unknown backbone)", "convnext_galactic_9000"),
    "shape-mismatch": ("ViT-B/16 (wrong head widths)", "tensors of the wrong shape"),
    "hub-offline": ("Swin-B (Hub only)", "is not in the local Hub cache"),
}
MISSING_REVISION = "0" * 40


def _copy_model(fixture: Manifest, key: str, target: Path) -> Path:
    source = fixture.local_path(next(entry for entry in fixture.models if entry.key == key))
    shutil.copytree(source, target)
    return target


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def faulty_manifest(tmp_path_factory) -> Path:
    """The six fixture models plus the four faults, in one manifest."""
    fixture = read_manifest(write_fixture_set(tmp_path_factory.getbasetemp() / "spinecad-fixture"))
    root = tmp_path_factory.mktemp("faulty-set")

    weights = _copy_model(fixture, "resnet152", root / "corrupt") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short

    unknown = _copy_model(fixture, "convnext_b", root / "unknown-backbone")
    _edit_config(unknown, lambda config: config["backbone"].update(architecture="convnext_galactic_9000"))

    mismatch = _copy_model(fixture, "vit_b16", root / "shape-mismatch")
    _edit_config(mismatch, lambda config: config.update(hidden_dims=[96, 64]))

    entries = [replace(entry, path=str(fixture.local_path(entry))) for entry in fixture.models]
    entries += [ModelEntry(key=key, name=name, path=key) for key, (name, _) in FAULTS.items() if key != "hub-offline"]
    entries.append(ModelEntry(key="hub-offline", name=FAULTS["hub-offline"][0],
                              repo_id="spinecad-tests/no-such-model", revision=MISSING_REVISION))
    path = root / "manifest.json"
    write_manifest(Manifest(tuple(entries), title="Faulty set", demo=True), path)
    return path


@pytest.fixture()
def hub_offline(monkeypatch):
    """The Hub library checks this flag on every request: no network, as in the app (HF_HUB_OFFLINE=1)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_each_fault_is_refused_with_a_message_naming_the_model(faulty_manifest, hub_offline):
    models, failures = load_manifest_models(read_manifest(faulty_manifest))
    assert [loaded.name for loaded in models] == GOOD_NAMES
    assert [failure.key for failure in failures] == list(FAULTS)
    for failure in failures:
        name, phrase = FAULTS[failure.key]
        assert failure.name == name and failure.reason.startswith(f"{name}: "), failure.reason
        assert phrase in failure.reason, failure.reason
        assert "Traceback" not in failure.reason and len(failure.reason) < 600


@pytest.mark.parametrize("cut", [0, 7, 8, 100, -1], ids=["empty", "in-length", "no-header", "in-header", "garbled"])
def test_a_safetensors_file_cut_or_garbled_anywhere_is_a_checkpoint_error(faulty_manifest, tmp_path, cut):
    shutil.copytree(read_manifest(faulty_manifest).models[0].path, tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:cut] if cut >= 0 else data[:8] + b"{not json" + data[17:])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated or corrupt"):
        SpineCADModel.load(tmp_path / "model")


@pytest.mark.slow
def test_the_app_serves_the_good_models_and_names_the_broken_ones(faulty_manifest, tmp_path):
    with running_app(faulty_manifest, tmp_path / "gradio-tmp", tmp_path / "app.log") as url:
        client = Client(url, verbose=False)
        banner = next(c["props"]["value"] for c in client.config["components"]
                      if c["props"].get("elem_id") == "banner")
        result = client.predict(handle_file(DEFAULT_EXAMPLES_DIR / "severe_axial.dcm"), "L4/L5", api_name="/predict")
    assert f"6 of {6 + len(FAULTS)} models loaded" in banner
    for name, phrase in FAULTS.values():
        assert f"{name} could not be loaded" in banner and phrase in banner
    assert "The other models still serve" in banner
    assert list(result["models"]) == GOOD_NAMES
    log = (tmp_path / "app.log").read_text(errors="replace")
    assert "6 model(s)" in log and f"{len(FAULTS)} failed" in log and "Traceback" not in log
