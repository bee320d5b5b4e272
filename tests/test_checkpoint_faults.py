"""Broken checkpoints and manifests: each fault is refused with a message naming the model, the app process starts
on them and serves the others, and a manifest that cannot be read leaves a page that says so.

Three faults beside the six good fixture models: a truncated model.safetensors, a config.json naming a backbone
architecture that does not exist, and a config whose head widths do not match the weights. Real files, the real
loader, the real app (``python app.py``: starting on broken checkpoints is the point). A Hub entry the offline Hub
cannot serve is test_model's; the banner as a launched page shows it is test_app's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from spinecad import ui
from spinecad.inference.loading import load_manifest_models
from spinecad.inference.manifest import Manifest, ManifestEntry, read_manifest, write_manifest
from spinecad.models.model import CheckpointError, SpineCADModel
from spinecad.ui import text as ui_text
from tests.app_fixture import running_app
from tests.conftest import EXAMPLES_DIR

GOOD_NAMES = ["ViT-B/16", "Swin-B", "BEiT-B", "EfficientNetV2-M", "ResNet-152", "ConvNeXt-B"]
# key -> (display name, a phrase the refusal must contain)
FAULTS = {
    "corrupt": ("ResNet-152 (corrupt weights)", "model.safetensors is truncated or corrupt"),
    "unknown-backbone": ("ConvNeXt-B (unknown backbone)", "convnext_galactic_9000"),
    "shape-mismatch": ("ViT-B/16 (wrong head widths)", "tensors of the wrong shape"),
}


def _copy_model(fixture: Manifest, key: str, target: Path) -> Path:
    source = fixture.local_path(next(entry for entry in fixture.models if entry.key == key))
    shutil.copytree(source, target)
    return target


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def faulty_manifest(fixture_manifest, tmp_path_factory) -> Path:
    """The six fixture models plus the three faults, in one manifest."""
    fixture = read_manifest(fixture_manifest)
    root = tmp_path_factory.mktemp("faulty-set")

    weights = _copy_model(fixture, "resnet152", root / "corrupt") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short

    unknown = _copy_model(fixture, "convnext_b", root / "unknown-backbone")
    _edit_config(unknown, lambda config: config["backbone"].update(architecture="convnext_galactic_9000"))

    mismatch = _copy_model(fixture, "vit_b16", root / "shape-mismatch")
    _edit_config(mismatch, lambda config: config.update(hidden_dims=[96, 64]))

    entries = [replace(entry, path=str(fixture.local_path(entry))) for entry in fixture.models]
    entries += [ManifestEntry(key=key, name=name, path=key) for key, (name, _) in FAULTS.items()]
    path = root / "manifest.json"
    write_manifest(Manifest(tuple(entries), title="Faulty set", demo=True), path)
    return path


def test_each_fault_is_refused_with_a_message_naming_the_model(faulty_manifest):
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
def test_the_app_process_starts_on_broken_checkpoints_and_serves_the_good_models(faulty_manifest, tmp_path):
    with running_app(faulty_manifest, tmp_path / "gradio-tmp", tmp_path / "app.log") as url:
        result = Client(url, verbose=False).predict(handle_file(EXAMPLES_DIR / "severe_axial.dcm"), "L4/L5",
                                                    api_name="/predict")
    assert list(result["models"]) == GOOD_NAMES and result["warnings"] == []
    log = (tmp_path / "app.log").read_text(errors="replace")
    assert "6 model(s)" in log and f"{len(FAULTS)} failed" in log and "Traceback" not in log


@pytest.mark.parametrize("content", [None, "{", '{"format": "spinecad-manifest/1", "models": []}'],
                         ids=["missing", "not-json", "no-models"])
def test_a_manifest_that_cannot_be_read_leaves_a_page_that_says_why(tmp_path, content):
    """app.py's path (``ui.load_predictor`` -> ``ui.build``): no exception, no models, the reason in the banner."""
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    predictor, problem = ui.load_predictor(tmp_path / "manifest.json")
    assert predictor.models == [] and problem is not None and problem.endswith(ui_text.NO_MANIFEST)
    page = ui.build(predictor, examples_dir=EXAMPLES_DIR, problem=problem)
    banner = next(c["props"]["value"] for c in page.config["components"] if c["props"].get("elem_id") == "banner")
    assert "No models could be read" in banner and problem in banner
