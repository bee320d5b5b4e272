"""Heatmaps: the committed demo models look at the phantom's spinal canal, every family can be explained, and a
backbone without a CAM layer is refused in words."""

from __future__ import annotations

import base64
import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation

from spinecad.evaluation.store import load_metrics
from spinecad.imaging import read_slice
from spinecad.inference.heatmaps import class_activation_map, class_activation_maps, explain_slice, explain_slices
from spinecad.inference.loading import LoadedModel
from spinecad.inference.manifest import read_manifest
from spinecad.inference.predictor import Predictor
from spinecad.models.backbones import build_backbone
from spinecad.models.model import HeadConfig, ModelConfig, SpineCADModel
from spinecad.models.registry import (
    CPU_PROFILE,
    PAPER_PROFILE,
    BackboneSpec,
    HeatmapUnavailable,
    transformers_spec,
)
from spinecad.ui.analysis import explanation_to_dict
from tests.conftest import DEMO_MANIFEST
from train.phantom import render_axial_scene, write_axial_dicom

LEVEL = "L4/L5"
SIDE = 192  # the committed examples' size
N_SLICES = 4
CANAL_MARGIN_PX = 4  # the canal mask dilated by a few pixels: the sac's wall belongs to it
# Mass share inside the canal region over its share of the image: 1 = spread evenly (noise), 2 = twice as dense.
MIN_CONCENTRATION = 2.0


def mass_inside(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's total mass that lies inside ``region`` (a boolean mask of the same shape)."""
    total = float(heatmap.sum())
    return float(heatmap[region].sum()) / total if total > 0 else 0.0


@pytest.fixture(scope="module")
def predictor(demo_predictor) -> Predictor:
    return demo_predictor


@pytest.fixture(scope="module")
def normal_slices(tmp_path_factory) -> list[tuple[np.ndarray, np.ndarray]]:
    """Normal/Mild phantom slices as the app reads them (DICOM window applied) and their canal regions."""
    folder = tmp_path_factory.mktemp("phantom-slices")
    rng = np.random.default_rng(2024)
    slices = []
    for index in range(N_SLICES):
        scene = render_axial_scene(0, rng, SIDE)
        path = write_axial_dicom(folder / f"slice-{index}.dcm", scene.pixels)
        slices.append((read_slice(path).pixels, binary_dilation(scene.canal_mask, iterations=CANAL_MARGIN_PX)))
    return slices


@pytest.fixture(scope="module")
def explained(predictor, normal_slices) -> list[list]:
    """Per slice, every demo model's heatmap of the Normal/Mild logit (the true grade) at L4/L5."""
    return [explain_slice(predictor.models, pixels, LEVEL, grade="Normal/Mild") for pixels, _ in normal_slices]


def test_demo_heatmaps_concentrate_on_the_spinal_canal(predictor, explained, normal_slices, artifacts_dir):
    names = [h.name for h in explained[0]]
    concentration = {}
    for k, name in enumerate(names):
        shares = [mass_inside(heatmaps[k].heatmap, region) for heatmaps, (_, region) in zip(explained, normal_slices,
                                                                                              strict=True)]
        areas = [region.mean() for _, region in normal_slices]
        concentration[name] = float(np.mean(shares) / np.mean(areas))
    report = ", ".join(f"{name} {value:.1f}x" for name, value in concentration.items())
    (artifacts_dir / "heatmap_concentration.txt").write_text(report + "\n")
    assert names == ["ViT-B/16", "Swin-B", "BEiT-B", "EfficientNetV2-M", "ResNet-152", "ConvNeXt-B"]
    # The demo's best model (test macro-F1) must look at the canal, and so must the demo set as a whole (its
    # median model). Each model's own map is what it learnt from random init on a few hundred phantoms: some may
    # spread their evidence over the slice, and the README says which.
    root = read_manifest(DEMO_MANIFEST).evaluation_dir
    scores = {m.name: load_metrics(root, m.key, "test").metrics.macro_f1 for m in predictor.models}
    best = max(scores, key=scores.get)
    assert concentration[best] >= MIN_CONCENTRATION, (best, report)
    assert float(np.median(list(concentration.values()))) >= MIN_CONCENTRATION, report


def test_every_family_gives_a_heatmap_and_an_overlay_at_the_slices_size(explained, normal_slices):
    pixels, _ = normal_slices[0]
    for heatmap in explained[0]:
        assert heatmap.problem is None and heatmap.grade == "Normal/Mild"
        assert heatmap.heatmap.shape == pixels.shape and heatmap.heatmap.dtype == np.float32
        assert 0.0 <= heatmap.heatmap.min() and 0.9 < heatmap.heatmap.max() <= 1.0  # peak 1 before the resize
        assert heatmap.overlay.shape == (*pixels.shape, 3) and heatmap.overlay.dtype == np.uint8
        assert 0.0 < heatmap.seconds < 30.0 and heatmap.method.split(" · ")[0] in ("Grad-CAM", "HiResCAM")


def test_by_default_each_model_explains_its_own_grade_at_the_level(predictor, normal_slices):
    pixels, _ = normal_slices[1]
    prediction = predictor.predict(pixels)
    heatmaps = explain_slice(predictor.models, pixels, "L2/L3")
    for output, heatmap in zip(prediction.outputs, heatmaps, strict=True):
        assert heatmap.grade == prediction.grade(output.probs, "L2/L3")
        # heatmaps run fp32; a prediction in bf16 stays within the registry's agreement bound of it
        bound = 1e-5 if output.precision == "fp32" else 0.02
        assert heatmap.probability == pytest.approx(float(output.probs[1].max()), abs=bound)


def test_a_chosen_grade_changes_the_map_and_the_weights_are_left_as_they_were(predictor, normal_slices):
    pixels, _ = normal_slices[0]
    model = predictor.models[4].model  # ResNet-152
    flags = [p.requires_grad for p in model.parameters()]
    normal, normal_id, _, _ = class_activation_map(model, pixels, LEVEL, grade="Normal/Mild")
    severe, severe_id, _, _ = class_activation_map(model, pixels, LEVEL, grade="Severe")
    assert (normal_id, severe_id) == (0, 2) and not np.allclose(normal, severe)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_a_batched_pass_gives_each_pair_the_map_it_gets_alone(predictor, normal_slices):
    # Two slices, three levels: every family's batched rows must equal its single passes, i.e. rows never mix. In
    # float64, because a demo model's map can be numerically degenerate (raw CAM values of 1e-9 or less, where the
    # head is sure of its grade); min-max scaling then turns float32 rounding, which differs between a batch of one
    # and of three, into visible differences that say nothing about the batching.
    pairs = [(normal_slices[0][0], "L1/L2"), (normal_slices[1][0], LEVEL), (normal_slices[0][0], "L5/S1")]
    for loaded in predictor.models:
        model = copy.deepcopy(loaded.model).double()
        batched, explained, probs, _ = class_activation_maps(model, pairs)
        assert batched.shape[0] == len(pairs)
        for row, (pixels, level) in enumerate(pairs):
            alone, alone_id, alone_probs, _ = class_activation_map(model, pixels, level)
            assert explained[row] == alone_id, loaded.name
            np.testing.assert_allclose(probs[row], alone_probs, atol=1e-9, err_msg=loaded.name)
            np.testing.assert_allclose(batched[row], alone, atol=1e-4, err_msg=f"{loaded.name} {level}")
    # Different levels of one slice are different scores: the rows are not copies of each other.
    assert any(not np.allclose(a.heatmap, b.heatmap) for a, b in zip(*explain_slices(
        predictor.models, [pairs[0], pairs[2]]), strict=True))


def test_explaining_many_pairs_keeps_their_order_and_shares_the_batch_cost(predictor, normal_slices):
    pairs = [(pixels, level) for (pixels, _), level in zip(normal_slices, ("L1/L2", "L2/L3", "L3/L4", "L4/L5"),
                                                           strict=True)]
    per_pair = explain_slices(predictor.models[:2], pairs, batch_size=3)  # a batch of 3, then one of 1
    assert [[h.level for h in heatmaps] for heatmaps in per_pair] == [[level] * 2 for _, level in pairs]
    assert [h.name for h in per_pair[0]] == ["ViT-B/16", "Swin-B"]
    for (pixels, _), heatmaps in zip(pairs, per_pair, strict=True):
        assert all(h.heatmap.shape == pixels.shape and h.seconds > 0 for h in heatmaps)


@pytest.mark.parametrize("spec", CPU_PROFILE, ids=lambda s: s.name)
def test_every_cpu_family_maps_its_cam_layer_to_an_eight_by_eight_grid(spec):
    backbone = build_backbone(spec)
    seen = {}
    handle = backbone.cam_layer().register_forward_hook(lambda module, inputs, output: seen.setdefault("out", output))
    with torch.no_grad():
        backbone.features(torch.zeros(1, 3, spec.input_size, spec.input_size))
    handle.remove()
    feature_map = backbone.cam_feature_map(seen["out"])
    assert feature_map.ndim == 4 and feature_map.shape[-2:] == (8, 8)


def test_every_paper_row_names_a_cam_layer_and_cpu_rows_inherit_the_rest():
    for paper, cpu in zip(PAPER_PROFILE, CPU_PROFILE, strict=True):
        assert paper.cam_layer and paper.cam_method in ("gradcam", "hirescam")
        assert (cpu.cam_reshape, cpu.cam_method) == (paper.cam_reshape, paper.cam_method)


def test_a_checkpoint_saved_before_heatmaps_existed_uses_its_registry_row():
    spec = CPU_PROFILE[4]
    old = {k: v for k, v in spec.to_dict().items() if k not in BackboneSpec.EXPLANATION_FIELDS}
    backbone = build_backbone(BackboneSpec.from_dict(old))
    assert backbone.spec.cam_layer is None and backbone.cam_spec() == spec
    assert backbone.cam_layer() is backbone.model.layer3


def test_a_backbone_without_a_cam_layer_is_refused_in_words(normal_slices):
    spec = transformers_spec("example/tiny-vit", display_name="TinyViT", config={
        "model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "image_size": 64, "patch_size": 16})
    model = SpineCADModel(ModelConfig(backbone=spec.to_dict(), head=HeadConfig(level_dim=8, hidden_dims=(16,)))).eval()
    with pytest.raises(HeatmapUnavailable, match="names no layer for heatmaps"):
        class_activation_map(model, normal_slices[0][0], LEVEL)
    [heatmap] = explain_slice([LoadedModel("tiny", "TinyViT", model, "test")], normal_slices[0][0], LEVEL)
    assert heatmap.heatmap is None and heatmap.overlay is None and "TinyViT" in heatmap.problem


def test_the_api_form_holds_one_png_per_model(explained, normal_slices):
    result = explanation_to_dict(explained[0])
    assert result["level"] == LEVEL and len(result["models"]) == 6
    for values in result["models"].values():
        header, encoded = values["image"].split(",", 1)
        assert header == "data:image/png;base64"
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).size == normal_slices[0][0].shape[::-1]
        assert values["grade"] == "Normal/Mild" and values["seconds"] > 0
