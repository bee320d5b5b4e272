"""Heatmaps: where each model looked for the grade it gives at one disc level (class-activation maps).

The maps are pytorch-grad-cam's, computed in fp32 on every device: under bf16 autocast the demo set's maps moved
by 0.12 to 1.0 (of 1; ViT-B's by 0.016; ``python bench/explain.py``). The explained score is one logit of the
model at the chosen level (the level embedding goes through the head like in a prediction): the model's own
predicted grade, or a grade asked for. Several (slice, level) pairs go through a model in one batched pass
(``explain_slices``: every level of a study, each on its own slice).
Which layer is read, how its output becomes a (B, C, H, W) map and which CAM variant fits the architecture are the
backbone's registry row (``cam_layer``, ``cam_reshape``, ``cam_method``); nothing here depends on the family.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from spinecad.inference.loading import LoadedModel
from spinecad.labels import level_index, severity_index
from spinecad.models.model import SpineCADModel
from spinecad.models.preprocess import slice_to_tensor
from spinecad.models.registry import HeatmapUnavailable

# pytorch-grad-cam (and OpenCV) are imported by the first heatmap, not at start: a prediction needs neither.
CAM_CLASSES = {"gradcam": "GradCAM", "hirescam": "HiResCAM"}  # class names in pytorch_grad_cam
CAM_NAMES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM"}
OVERLAY_OPACITY = 0.7  # colour over the slice where the map is strongest; none where it is zero
# (slice, level) pairs per batched CAM pass: a paper-size backbone keeps every activation of the batch for the
# backward, a few hundred MB at 8.
MAX_CAM_BATCH = 8


@dataclass(frozen=True)
class Heatmap:
    """One model's explanation at one level: the map, the slice with the map over it, and what it cost."""

    key: str
    name: str
    level: str
    grade: str | None  # the grade whose logit is explained; None when the model could not be explained
    probability: float | None  # the model's probability of that grade (uncalibrated)
    heatmap: np.ndarray | None  # (H, W) float32 in [0, 1] at the slice's size
    overlay: np.ndarray | None  # (H, W, 3) uint8
    seconds: float
    method: str  # e.g. "HiResCAM on layer3"
    problem: str | None = None  # why there is no map, or why it is blank


class _GradeLogitsAtLevels(nn.Module):
    """The model as an image classifier, each image of the batch at its own level: images -> (B, 3) logits, for
    the CAM library."""

    def __init__(self, model: SpineCADModel, levels: torch.Tensor) -> None:
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, self.levels).float()  # fp32 logits even under autocast (the CAM library's numpy)


@contextlib.contextmanager
def _weights_frozen(model: nn.Module) -> Iterator[None]:
    # Gradients are needed for the activations only: skip the weights' (faster, and no .grad left behind).
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def class_activation_map(model: SpineCADModel, pixels: np.ndarray, level: str | int, *, grade: str | int | None = None,
                         device: torch.device | str = "cpu") -> tuple[np.ndarray, int, np.ndarray, str]:
    """The heatmap (S, S) at the model's input size for ``grade`` (default: the model's grade) at ``level``.

    Returns (heatmap in [0, 1], explained grade id, the three probabilities at the level, method description).
    HeatmapUnavailable when the backbone's row names no CAM layer.
    """
    heatmaps, explained, probs, method = class_activation_maps(model, [(pixels, level)], grade=grade, device=device)
    return heatmaps[0], explained[0], probs[0], method


def class_activation_maps(model: SpineCADModel, items: Sequence[tuple[np.ndarray, str | int]], *,
                          grade: str | int | None = None, device: torch.device | str = "cpu",
                          ) -> tuple[np.ndarray, list[int], np.ndarray, str]:
    """One batched CAM pass over ``items`` ((slice, level) pairs: several levels of one slice, or each level's own
    slice of a study): one forward and one backward for the batch, each row's score at its own level.

    Returns (heatmaps (B, S, S) in [0, 1], explained grade ids, probabilities (B, 3), method description); each row
    is what ``class_activation_map`` gives for its pair alone, up to float rounding (rows do not mix: the score
    summed for the backward is a sum of per-row logits).
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    backbone = model.backbone
    spec = backbone.cam_spec()
    layer = backbone.cam_layer()
    levels = torch.tensor([lv if isinstance(lv, int) else level_index(lv) for _, lv in items], device=device)
    wrapped = _GradeLogitsAtLevels(model, levels)
    dtype = next(model.parameters()).dtype  # fp32, as every model is kept (a float64 copy checks the batching)
    images = torch.cat([slice_to_tensor(pixels, model.data_config) for pixels, _ in items]).to(device, dtype)
    images.requires_grad_(True)
    targets = None if grade is None else [ClassifierOutputTarget(grade if isinstance(grade, int)
                                                                 else severity_index(grade))] * len(items)
    cam_class = getattr(pytorch_grad_cam, CAM_CLASSES[spec.cam_method])
    cam = cam_class(model=wrapped, target_layers=[layer], reshape_transform=backbone.cam_feature_map)
    try:
        with _weights_frozen(model):
            heatmaps = cam(input_tensor=images, targets=targets)
        logits = cam.outputs.detach().float()
    finally:
        cam.activations_and_grads.release()
    probs = torch.softmax(logits, dim=-1).cpu().numpy()
    explained = [int(k) for k in np.argmax(probs, axis=1)] if targets is None else [t.category for t in targets]
    return heatmaps.astype(np.float32), explained, probs, f"{CAM_NAMES[spec.cam_method]} · {spec.cam_layer}"


def explain_slice(models: Sequence[LoadedModel], pixels: np.ndarray, level: str, *, grade: str | None = None,
                  device: torch.device | str = "cpu") -> list[Heatmap]:
    """A heatmap per model for ``level`` (each model's own grade unless ``grade`` is given), in model order."""
    return explain_slices(models, [(pixels, level)], grade=grade, device=device)[0]


def explain_slices(models: Sequence[LoadedModel], items: Sequence[tuple[np.ndarray, str]], *,
                   grade: str | None = None, device: torch.device | str = "cpu",
                   batch_size: int = MAX_CAM_BATCH) -> list[list[Heatmap]]:
    """Per (slice, level) pair, a heatmap per model in model order: each model explains the pairs in batched CAM
    passes of up to ``batch_size`` (the study mode's one slice per level; every level of one slice)."""
    result: list[list[Heatmap]] = [[] for _ in items]
    for loaded in models:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            began = time.perf_counter()
            try:
                small, explained, probs, method = class_activation_maps(loaded.model, chunk, grade=grade,
                                                                        device=device)
            except HeatmapUnavailable as error:
                seconds = (time.perf_counter() - began) / len(chunk)
                for offset, (_, level) in enumerate(chunk):
                    result[start + offset].append(Heatmap(loaded.key, loaded.name, level, None, None, None, None,
                                                          seconds, "none", str(error)))
                continue
            maps = [resize_heatmap(m, pixels.shape) for m, (pixels, _) in zip(small, chunk, strict=True)]
            seconds = (time.perf_counter() - began) / len(chunk)  # the batch's cost, shared by its pairs
            for offset, ((pixels, level), heatmap) in enumerate(zip(chunk, maps, strict=True)):
                grade_name = loaded.model.config.class_names[explained[offset]]
                problem = None
                if not heatmap.any():
                    problem = f"Empty map: no region of the slice raised the score for {grade_name} at this layer."
                result[start + offset].append(Heatmap(
                    loaded.key, loaded.name, level, grade_name, float(probs[offset][explained[offset]]), heatmap,
                    overlay_heatmap(pixels, heatmap), seconds, method, problem))
    return result


def resize_heatmap(heatmap: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A square map at the model's input size back onto the slice (the model saw a plain resize of it)."""
    image = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F")
    resized = np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(resized, 0.0, 1.0)


def overlay_heatmap(pixels: np.ndarray, heatmap: np.ndarray, opacity: float = OVERLAY_OPACITY) -> np.ndarray:
    """The greyscale slice with the map in colour (turbo: red = strongest), opaque only where the map is high."""
    import cv2

    grey = np.repeat(np.clip(pixels, 0.0, 1.0)[..., None], 3, axis=2).astype(np.float32)
    colours = cv2.applyColorMap(np.uint8(np.round(255 * heatmap)), cv2.COLORMAP_TURBO)
    colours = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    alpha = (opacity * heatmap)[..., None]
    return np.uint8(np.round(255 * ((1 - alpha) * grey + alpha * colours)))
