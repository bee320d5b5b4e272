"""The model's two halves, and its Hub format: exact round trips, strict safetensors-only loading."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch

from spinecad.backbones import CPU_PROFILE
from spinecad.model import CheckpointError, SpineCADModel

REPO = Path(__file__).resolve().parents[1]


def _inputs(model: SpineCADModel, batch: int = 3):
    torch.manual_seed(1)
    size = model.data_config.input_size
    return torch.randn(batch, 3, size, size), torch.tensor([0, 2, 4][:batch])


def test_head_matches_the_paper_shape(cpu_models):
    model = cpu_models[0]
    layers = [type(layer).__name__ for layer in model.classifier]
    assert layers == ["Linear", "LayerNorm", "GELU", "Dropout", "Linear", "LayerNorm", "GELU", "Dropout", "Linear"]
    assert model.classifier[0].out_features == 512 and model.classifier[4].out_features == 256
    assert model.classifier[-1].out_features == 3
    assert model.level_embedding.num_embeddings == 5 and model.level_embedding.embedding_dim == 256


@pytest.mark.parametrize("index", range(len(CPU_PROFILE)), ids=[s.name for s in CPU_PROFILE])
def test_save_load_round_trip_gives_identical_logits(cpu_models, tmp_path, index):
    model = cpu_models[index]
    images, levels = _inputs(model)
    with torch.no_grad():
        before = model(images, levels)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["README.md", "config.json", "model.safetensors"]
    loaded = SpineCADModel.load(tmp_path / "ckpt")
    with torch.no_grad():
        after = loaded(images, levels)
    assert torch.equal(before, after)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["backbone"]["name"] == CPU_PROFILE[index].name
    assert config["backbone"]["input_size"] == model.data_config.input_size
    assert config["class_names"] == ["Normal/Mild", "Moderate", "Severe"] and len(config["level_names"]) == 5


def test_two_halves_equal_forward_and_all_levels(cpu_models):
    model = cpu_models[1]
    images, levels = _inputs(model)
    with torch.no_grad():
        features = model.features(images)
        all_levels = model.head_all_levels(features)
        assert torch.allclose(model(images, levels), all_levels[torch.arange(3), levels], atol=1e-6)


@pytest.fixture()
def saved(cpu_models, tmp_path) -> Path:
    folder = tmp_path / "saved"
    cpu_models[0].save_pretrained(folder)
    return folder


def test_missing_and_unexpected_keys_are_errors(saved):
    state = safetensors.torch.load_file(saved / "model.safetensors")
    state.pop("classifier.0.weight")
    state["extra.weight"] = torch.zeros(1)
    safetensors.torch.save_file(state, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing tensors.*classifier.0.weight.*1 unexpected"):
        SpineCADModel.load(saved)


def test_shape_mismatch_names_the_tensor(saved):
    config = json.loads((saved / "config.json").read_text())
    config["level_dim"] = 128
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"2 tensors of the wrong shape .e.g. classifier.0.weight: checkpoint"):
        SpineCADModel.load(saved)


def test_corrupt_weights_and_config_are_refused(saved, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(saved, other)
    weights = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match=r"saved.*model.safetensors is truncated or corrupt"):
        SpineCADModel.load(saved)
    (other / "config.json").write_text('{"backbone": {"name": "vit')
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON"):
        SpineCADModel.load(other)


def test_unknown_config_fields_and_backbone_sources_are_refused(saved):
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "surprise": True}))
    with pytest.raises(CheckpointError, match="unknown fields: surprise"):
        SpineCADModel.load(saved)
    config["backbone"]["source"] = "keras"
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown source 'keras'"):
        SpineCADModel.load(saved)


def test_pickled_weights_are_never_loaded(saved):
    state = safetensors.torch.load_file(saved / "model.safetensors")
    torch.save(state, saved / "pytorch_model.bin")
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors"):
        SpineCADModel.load(saved)


def _lay_out_hub_cache(cache: Path, repo_id: str, commit: str, folder: Path) -> None:
    """Lay files out exactly as the huggingface_hub client caches a download: blobs, snapshots, refs."""
    import hashlib

    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for file in folder.iterdir():
        payload = file.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(payload).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(payload)
        link = repo_dir / "snapshots" / commit / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def test_loading_through_huggingface_hub_from_an_offline_cache(saved, tmp_path, cpu_models):
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"
    _lay_out_hub_cache(cache, "spinecad/vit-b16-demo", commit, saved)
    images, levels = _inputs(cpu_models[0])
    torch.save({"images": images, "levels": levels}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = cpu_models[0](images, levels)
    script = textwrap.dedent(f"""
        import torch, sys
        from spinecad.model import SpineCADModel, CheckpointError
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        model = SpineCADModel.load("spinecad/vit-b16-demo", revision={commit!r})
        with torch.no_grad():
            torch.save(model(inputs["images"], inputs["levels"]), {str(tmp_path / "out.pt")!r})
        try:
            SpineCADModel.load("spinecad/vit-b16-demo", revision="f" * 40)
        except CheckpointError as error:
            print("REFUSED:", error)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
    assert "REFUSED: spinecad/vit-b16-demo@ffff" in result.stdout
