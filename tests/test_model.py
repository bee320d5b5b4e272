"""The model's two halves, and its Hub format: exact round trips, strict safetensors-only loading, and a manifest's
Hub entry served offline: from the local Hub cache, else from the entry's local copy, else refused by name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import torch

from spinecad.inference.loading import load_manifest_models
from spinecad.inference.manifest import Manifest, ManifestEntry, read_manifest, write_manifest
from spinecad.models.model import CheckpointError, SpineCADModel
from spinecad.models.registry import CPU_PROFILE


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
def test_save_load_round_trip_gives_identical_weights_and_logits(cpu_models, tmp_path, index):
    model = cpu_models[index]
    images, levels = _inputs(model)
    with torch.no_grad():
        before = model(images, levels)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["README.md", "config.json", "model.safetensors"]
    loaded = SpineCADModel.load(tmp_path / "ckpt")
    with torch.no_grad():
        after = loaded(images, levels)
    # The file holds the weights bit for bit. The loaded ones are views of the mapped file (no copy; safetensors
    # aligns them to 8 bytes, the allocator to 64), so a kernel may sum in another order: EfficientNetV2's logits
    # can then differ in the last bits, never more.
    saved = model.state_dict()
    assert all(torch.equal(saved[key], value) for key, value in loaded.state_dict().items())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert not any(t.is_meta for t in tensors)  # non-persistent buffers (Swin, BEiT) were built, not left empty
    assert all(p.requires_grad for p in loaded.parameters())  # trainable as a fresh model, e.g. for fine-tuning
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["backbone"]["name"] == CPU_PROFILE[index].name
    assert config["backbone"]["input_size"] == model.data_config.input_size
    assert config["class_names"] == ["Normal/Mild", "Moderate", "Severe"] and len(config["level_names"]) == 5


def test_loading_builds_without_random_initialisation(cpu_models, tmp_path):
    """The weights come from the file alone: building on the meta device draws no random numbers at all."""
    for model in cpu_models:
        model.save_pretrained(tmp_path / model.config.backbone["name"])
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    for model in cpu_models:
        SpineCADModel.load(tmp_path / model.config.backbone["name"])
    assert torch.equal(torch.rand(4), expected)
    torch.manual_seed(0)
    SpineCADModel.build(CPU_PROFILE[0].name)  # while a fresh build does initialise
    assert not torch.equal(torch.rand(4), expected)


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
    (saved / "config.json").write_text(json.dumps({**config, "backbone": "resnet152", "format": None}))
    with pytest.raises(CheckpointError, match="does not describe a backbone"):
        SpineCADModel.load(saved)


def test_a_config_missing_defaults_loads_and_says_which_once(saved, caplog):
    config = json.loads((saved / "config.json").read_text())
    del config["format"], config["dropout"]
    (saved / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="spinecad.models.model"):
        SpineCADModel.load(saved)
        SpineCADModel.load(saved)
    said = [r.getMessage() for r in caplog.records if r.name == "spinecad.models.model"]
    assert len(said) == 1 and "has no dropout, format" in said[0]


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


def test_a_hub_entry_offline_loads_from_the_cache_else_from_its_local_copy_else_is_refused(
        saved, tmp_path, cpu_models, monkeypatch):
    """The Hub offline (HF_HUB_OFFLINE=1, as the tests and a Space without network run) with one revision cached."""
    repo_id, cached, absent = "spinecad/vit-b16-demo", "0123456789abcdef0123456789abcdef01234567", "f" * 40
    _lay_out_hub_cache(tmp_path / "hub", repo_id, cached, saved)
    # huggingface_hub reads both at every call (from the environment once, at import): patched, no subprocess needed.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cpu_models[1].save_pretrained(tmp_path / "local-copy")  # another model: which one loaded is plain to see
    write_manifest(Manifest((
        ManifestEntry(key="cached", name="Cached", path="local-copy", repo_id=repo_id, revision=cached),
        ManifestEntry(key="fallback", name="Fallback", path="local-copy", repo_id=repo_id, revision=absent),
        ManifestEntry(key="hub-only", name="Hub only", repo_id=repo_id, revision=absent),
    ), title="Hub entries"), tmp_path / "manifest.json")

    models, failures = load_manifest_models(read_manifest(tmp_path / "manifest.json"))

    images, levels = _inputs(cpu_models[0])
    by_key = {loaded.key: loaded for loaded in models}
    assert list(by_key) == ["cached", "fallback"]
    # The cached revision comes from the Hub cache (not the local copy), weights exact.
    assert by_key["cached"].source == f"hub: {repo_id}@{cached[:12]}" and by_key["cached"].note is None
    with torch.no_grad():
        assert torch.equal(by_key["cached"].model(images, levels), cpu_models[0](images, levels))
    # A revision the cache lacks falls back to the entry's local copy, and says why.
    assert by_key["fallback"].source == f"local: {tmp_path / 'local-copy'}"
    assert by_key["fallback"].model.display_name == cpu_models[1].display_name
    note = by_key["fallback"].note
    assert note.startswith(f"Hub copy unavailable ({repo_id} at revision {absent[:12]} is not in the local Hub cache")
    assert note.endswith("); using the local copy.")
    # Without a local copy it is refused by name, in a sentence, not a stack trace.
    [failure] = failures
    assert failure.key == "hub-only" and failure.reason.startswith(f"Hub only: {repo_id} at revision {absent[:12]} ")
    assert "Traceback" not in failure.reason and len(failure.reason) < 600
    # The model's own loader refuses an uncached revision offline too, naming repo and revision.
    with pytest.raises(CheckpointError, match=f"^{repo_id}@{absent}: "):
        SpineCADModel.load(repo_id, revision=absent)
