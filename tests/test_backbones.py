"""The registry and the uniform backbone interface, exercised on every CPU-profile family and a transformers model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from spinecad.models.backbones import build_backbone
from spinecad.models.model import SpineCADModel
from spinecad.models.registry import (
    CPU_PROFILE,
    PAPER_PROFILE,
    BackboneError,
    BackboneSpec,
    PretrainedWeightsUnavailable,
    cpu_bf16_allowed,
    get_spec,
    list_backbones,
    profile,
    register,
    transformers_spec,
)

TINY_VIT_CONFIG = {
    "model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 64, "image_size": 64, "patch_size": 16,
}


def test_profiles_hold_the_paper_six_and_their_cpu_siblings():
    assert [spec.display_name for spec in profile("paper")] == [
        "ViT-B/16", "Swin-B", "BEiT-B", "EfficientNetV2-M", "ResNet-152", "ConvNeXt-B"
    ]
    for paper, cpu in zip(PAPER_PROFILE, CPU_PROFILE, strict=True):
        assert cpu.architecture == paper.architecture and cpu.name == paper.name + "-cpu"
        assert paper.pretrained_tag and cpu.pretrained_tag is None
        assert paper.input_size == 224
    assert "in22k" in get_spec("beit_b").pretrained_tag and get_spec("beit_b").note


# A row added through register() is tested like the paper's: the parametrisation reads the registry itself.
register(transformers_spec("example/tiny-vit", config=TINY_VIT_CONFIG, display_name="TinyViT"))


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if get_spec(name).input_size >= 224 else name  # paper size: seconds
    for name in list_backbones()
])
def test_every_registered_backbone_runs_forward_and_backward_into_every_parameter(name: str):
    spec = get_spec(name)
    torch.manual_seed(0)
    backbone = build_backbone(spec)
    images = torch.randn(2, 3, spec.input_size, spec.input_size, requires_grad=True)
    features = backbone.features(images)
    assert features.shape == (2, backbone.num_features)
    features.square().mean().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    # Every parameter is in the graph (a zero gradient is allowed: timm zero-initialises ResNets' last BN per block).
    starved = [n for n, p in backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert starved == [], f"{name}: no gradient reaches {starved[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters())
    groups = backbone.layer_groups()
    flat = [p for group in groups for p in group]
    assert len(flat) == len(list(backbone.parameters())) and len(groups) >= 8
    assert backbone.data_config.input_size == spec.input_size


def test_paper_rows_take_normalisation_from_the_weights_own_pretrained_config():
    import timm

    for spec in PAPER_PROFILE:
        config = timm.get_pretrained_cfg(f"{spec.architecture}.{spec.pretrained_tag}")
        assert (spec.mean, spec.std, spec.interpolation) == (config.mean, config.std, config.interpolation)
        assert spec.input_size == 224  # the paper's one override: every model is fed 224 px
    cpu = {spec.family: spec for spec in CPU_PROFILE}
    assert all(cpu[spec.name].data_config.mean == spec.mean for spec in PAPER_PROFILE)


def test_spec_round_trips_through_a_dict():
    for spec in PAPER_PROFILE + CPU_PROFILE:
        assert BackboneSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(BackboneError, match="unknown fields"):
        BackboneSpec.from_dict({**CPU_PROFILE[0].to_dict(), "surprise": 1})


def test_unknown_names_are_refused_with_the_known_ones_listed():
    with pytest.raises(BackboneError, match=r"Unknown backbone 'convnext_giant'.*vit_b16"):
        get_spec("convnext_giant")
    with pytest.raises(BackboneError, match="unknown source"):
        build_backbone(BackboneSpec(**{**CPU_PROFILE[0].to_dict(), "source": "keras"}))


def test_transformers_backbone_behind_the_same_interface():
    spec = get_spec("hf:example/tiny-vit")  # registered above, so no Hub lookup
    backbone = build_backbone(spec)
    images = torch.randn(2, 3, 64, 64)
    assert backbone.features(images).shape == (2, 32) == (2, backbone.num_features)
    assert backbone.data_config.input_size == 64
    assert len(backbone.layer_groups()) >= 8
    rebuilt = build_backbone(BackboneSpec.from_dict(spec.to_dict()))  # from config.json alone, offline
    assert rebuilt.num_features == 32


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if get_spec(name).input_size >= 224 else name
    for name in list_backbones()
])
def test_every_registered_backbone_loads_from_its_checkpoint_built_on_the_meta_device(name: str, tmp_path):
    torch.manual_seed(0)
    model = SpineCADModel.build(name).eval()
    model.save_pretrained(tmp_path)
    loaded = SpineCADModel.load(tmp_path)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    size = model.data_config.input_size
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(loaded.features(images), model.features(images))


def test_cpu_profile_has_no_pretrained_weights_to_fetch():
    with pytest.raises(PretrainedWeightsUnavailable, match="no pretrained weights"):
        build_backbone(CPU_PROFILE[0]).load_pretrained_weights()


def test_explanation_fields_leave_the_training_fingerprint_alone():
    spec = CPU_PROFILE[0]
    other_layer = replace(spec, cam_layer="blocks.0.norm1", cam_method="hirescam")
    assert spec.training_dict() == other_layer.training_dict()  # a finished run is not retrained for a heatmap
    assert not set(BackboneSpec.EXPLANATION_FIELDS) & set(spec.training_dict())
    assert set(spec.to_dict()) - set(spec.training_dict()) == {*BackboneSpec.EXPLANATION_FIELDS,
                                                                *BackboneSpec.INFERENCE_FIELDS}


def test_the_cpu_precision_verdict_leaves_the_training_fingerprint_alone():
    spec = CPU_PROFILE[0]
    assert replace(spec, cpu_bf16=not spec.cpu_bf16).training_dict() == spec.training_dict()


def test_cpu_bf16_comes_from_the_checkpoint_else_the_registry_row_else_fp32():
    spec = CPU_PROFILE[0]
    saved_before_the_field = BackboneSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "cpu_bf16"})
    assert cpu_bf16_allowed(saved_before_the_field) == bool(spec.cpu_bf16)
    assert cpu_bf16_allowed(replace(spec, cpu_bf16=False)) is False
    assert cpu_bf16_allowed(replace(spec, cpu_bf16=True)) is True
    stranger = replace(spec, name="not-registered", cpu_bf16=None)
    assert cpu_bf16_allowed(stranger) is False
    assert cpu_bf16_allowed(replace(spec, architecture="resnet18", cpu_bf16=None)) is False
