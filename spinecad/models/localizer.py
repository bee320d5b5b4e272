"""The disc-level localiser: a timm backbone's feature pyramid, a small top-down decoder and one heatmap per level.

    maps  = decoder(backbone.features_only(sagittal slice))     # (B, 5, S/4, S/4) logits
    probs = softmax over each map                                # where each disc level's canal point is
    point = soft-argmax in a window around the peak             # sub-pixel, blind to a second mode
    confidence = the probability mass in that window            # in [0, 1]; low when no place stands out

Trained on the canal points of ``train_label_coordinates.csv`` (RSNA 2024 top solutions place the levels the same
way). Saved the Hugging Face way like the graders (``config.json`` + ``model.safetensors`` + card) through
``PyTorchModelHubMixin``; loading is strict, safetensors-only and never downloads ImageNet weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from importlib.resources import files
from pathlib import Path

import safetensors
import safetensors.torch
import timm
import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin, hf_hub_download
from torch import nn
from torch.nn import functional as F

from spinecad.labels import LEVELS
from spinecad.models.model import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, _check_state_dict
from spinecad.models.preprocess import DataConfig
from spinecad.models.registry import BackboneError, BackboneSpec, PretrainedWeightsUnavailable, get_spec, timm_row

__all__ = ["CONFIG_FILE", "FORMAT", "LOCALIZER_BACKBONES", "WEIGHTS_FILE", "LocalizerConfig", "LocalizerModel"]

FORMAT = "spinecad-localizer/1"
CARD_TEMPLATE = files("spinecad.models").joinpath("localizer_card.md").read_text(encoding="utf-8")
OUTPUT_STRIDE = 4  # heatmap cells per input pixel step: the backbone's stride-4 stage sets it

# The backbone per profile, from the registry's ConvNeXt family. Paper: ConvNeXt-Nano (ImageNet-12k then 1k) at
# 384 px, small beside the graders. CPU: the registry's shrunk ConvNeXt sibling with timm's own 4-pixel patch stem
# (the grader sibling's 2-pixel stem costs four times as much at this size), at the phantom's own 256 px, so a disc
# a few pixels tall is not halved before the model sees it.
_CPU_CONVNEXT = get_spec("convnext_b-cpu")
LOCALIZER_BACKBONES: dict[str, BackboneSpec] = {
    "paper": timm_row("localizer_convnext_nano", "ConvNeXt-Nano", "convnext_nano", "in12k_ft_in1k",
                      "ImageNet-12k, fine-tuned on 1k", input_size=384, channels_last=True),
    "cpu": replace(_CPU_CONVNEXT, name="localizer_convnext-cpu", display_name="ConvNeXt (CPU sibling)",
                   input_size=256, kwargs={**_CPU_CONVNEXT.kwargs, "patch_size": OUTPUT_STRIDE}, cam_layer=None),
}


@dataclass
class LocalizerConfig:
    """Everything needed to rebuild the localiser and preprocess its input; stored as config.json."""

    backbone: dict  # a BackboneSpec as a dict: a rebuild needs neither the registry nor the network
    decoder_channels: int = 64  # width of the top-down decoder
    window: int = 2  # half-width (cells) of the window the point and its confidence are read from
    min_confidence: float = 0.3  # below it a level is left unplaced (set from the validation split by training)
    level_names: list[str] = field(default_factory=lambda: list(LEVELS))
    training: dict = field(default_factory=dict)  # facts about how the weights were made, when known
    format: str = FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> LocalizerConfig:
        """Strictly decode a config.json dict: unknown fields and another format are errors."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise CheckpointError(f"config.json has unknown fields: {', '.join(unknown)}.")
        if values.get("format") != FORMAT:
            raise CheckpointError(f"config.json has format {values.get('format')!r}; a localiser has {FORMAT!r}.")
        if not isinstance(values.get("backbone"), dict):
            raise CheckpointError("config.json does not describe a backbone (an object with its registry row).")
        return cls(**values)

    @property
    def backbone_spec(self) -> BackboneSpec:
        return BackboneSpec.from_dict(self.backbone)

    @property
    def data_config(self) -> DataConfig:
        return self.backbone_spec.data_config


def _conv(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class LocalizerModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="spinecad",
    model_card_template=CARD_TEMPLATE,
    tags=["medical-imaging", "mri", "lumbar-spine", "keypoint-detection"],
    license="apache-2.0",
    pipeline_tag="keypoint-detection",
):
    """Feature pyramid (strides 4..32) -> top-down sum -> one logit map per level; ``forward(images)`` gives them."""

    def __init__(self, config: LocalizerConfig | dict) -> None:
        super().__init__()
        self.config = config if isinstance(config, LocalizerConfig) else LocalizerConfig.from_dict(config)
        spec = self.config.backbone_spec
        try:
            self.backbone = timm.create_model(spec.architecture, pretrained=False, features_only=True,
                                              **spec.kwargs)
        except Exception as error:  # noqa: BLE001 - a bad architecture name or override from a config file
            raise BackboneError(f"Could not build localiser backbone {spec.architecture}: {error}") from None
        reductions = self.backbone.feature_info.reduction()
        # The stages from stride 4 on (a ResNet's stride-2 stem output is left out; it costs nothing extra).
        self.stages = [i for i, reduction in enumerate(reductions) if reduction >= OUTPUT_STRIDE]
        if not self.stages or reductions[self.stages[0]] != OUTPUT_STRIDE:
            raise BackboneError(f"{spec.architecture}: no feature stage at stride {OUTPUT_STRIDE}.")
        width = self.config.decoder_channels
        channels = self.backbone.feature_info.channels()
        self.lateral = nn.ModuleList(nn.Conv2d(channels[i], width, 1) for i in self.stages)
        self.smooth = _conv(width, width, 3)
        self.heads = nn.Conv2d(width, len(self.config.level_names), 1)

    @property
    def data_config(self) -> DataConfig:
        return self.config.data_config

    def load_pretrained_weights(self) -> None:
        """The spec's ImageNet weights into the backbone (Hub or cache)."""
        spec = self.config.backbone_spec
        if not spec.pretrained_tag:
            raise PretrainedWeightsUnavailable(f"{spec.display_name} ({spec.name}) has no pretrained weights.")
        tagged = f"{spec.architecture}.{spec.pretrained_tag}"
        try:
            pretrained = timm.create_model(tagged, pretrained=True, features_only=True, **spec.kwargs)
        except Exception as error:  # noqa: BLE001 - offline / cache miss surfaces as many error types
            raise PretrainedWeightsUnavailable(f"Pretrained weights for {tagged} could not be loaded "
                                               f"({type(error).__name__}); use --no-pretrained offline.") from None
        self.backbone.load_state_dict(pretrained.state_dict())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logit maps (B, L, S/4, S/4) of normalised (B, 3, S, S) images."""
        features = self.backbone(images)
        stages = [features[i] for i in self.stages]
        top = self.lateral[-1](stages[-1])
        for lateral, stage in zip(reversed(self.lateral[:-1]), reversed(stages[:-1]), strict=True):
            top = lateral(stage) + F.interpolate(top, size=stage.shape[-2:], mode="bilinear", align_corners=False)
        return self.heads(self.smooth(top))

    def decode(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, 2) points as (x, y) in input pixels and (B, L) confidences from logit maps."""
        return decode_maps(logits.float(), self.config.window)

    # ---- Hub format -------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path, *, config: dict | None = None, **kwargs):
        """The mixin's save, with config.json written from the config as it is now (e.g. a fitted threshold)."""
        return super().save_pretrained(save_directory, config=config or self.config.to_dict(), **kwargs)

    def generate_model_card(self, *args, metrics: dict | None = None, **kwargs) -> ModelCard:
        """The card from the localiser template: what it is, how it was trained, its test errors when known."""
        spec, training = self.config.backbone_spec, self.config.training
        values = {
            "display_name": spec.display_name, "architecture": spec.architecture, "pretraining": spec.pretraining,
            "input_size": spec.input_size, "min_confidence": f"{self.config.min_confidence:g}",
            "demo": bool(training.get("demo")), "metrics": sorted((metrics or {}).items()),
            "training": [(k, v) for k, v in sorted(training.items()) if not isinstance(v, dict | list)],
        }
        return super().generate_model_card(*args, **values, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                         local_files_only: bool, token, map_location: str = "cpu", strict: bool = True,
                         **model_kwargs) -> LocalizerModel:
        if not isinstance(model_kwargs.get("config"), dict | LocalizerConfig):
            raise CheckpointError(f"{model_id}: no readable config.json.")
        if not strict:
            raise CheckpointError("SpineCAD checkpoints load strictly; strict=False is not supported.")
        model = cls(model_kwargs.pop("config"))
        if os.path.isdir(model_id):
            weights = os.path.join(model_id, WEIGHTS_FILE)
            if not os.path.isfile(weights):
                raise CheckpointError(f"{model_id}: no {WEIGHTS_FILE} (only safetensors weights are loaded).")
        else:  # only ever the safetensors file: a pickle from the Hub is never unpickled
            weights = hf_hub_download(repo_id=model_id, filename=WEIGHTS_FILE, revision=revision, cache_dir=cache_dir,
                                      force_download=force_download, token=token, local_files_only=local_files_only)
        state = safetensors.torch.load_file(weights, device=str(map_location))
        _check_state_dict(model, state)
        model.load_state_dict(state, strict=True)
        return model.eval()

    @classmethod
    def load(cls, source: str | Path, revision: str | None = None, *, map_location: str = "cpu",
             local_files_only: bool = False) -> LocalizerModel:
        """Load from a local folder or a Hub repo id at a pinned revision; any failure is a CheckpointError."""
        name = str(source) + (f"@{revision}" if revision else "")
        try:
            return cls.from_pretrained(str(source), revision=revision, map_location=map_location,
                                       local_files_only=local_files_only)
        except CheckpointError as error:
            raise CheckpointError(str(error) if name in str(error) else f"{name}: {error}") from None
        except BackboneError as error:
            raise CheckpointError(f"{name}: {error}") from None
        except json.JSONDecodeError:
            raise CheckpointError(f"{name}: config.json is not valid JSON (truncated or corrupt).") from None
        except safetensors.SafetensorError as error:
            raise CheckpointError(f"{name}: {WEIGHTS_FILE} is truncated or corrupt ({error}).") from None
        except (OSError, ValueError, TypeError, RuntimeError) as error:
            raise CheckpointError(f"{name}: {type(error).__name__}: {error}") from None


def decode_maps(logits: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per map: the peak cell, the probability-weighted mean position in the (2w+1)^2 window around it (in input
    pixels, cell centres at ``stride * (i + 0.5) - 0.5``) and the probability mass inside that window."""
    batch, levels, height, width = logits.shape
    probs = logits.flatten(2).softmax(-1).view(batch, levels, height, width)
    peak = probs.flatten(2).argmax(-1)
    rows, cols = torch.div(peak, width, rounding_mode="floor"), peak % width
    grid_r = torch.arange(height, device=logits.device).view(1, 1, height, 1)
    grid_c = torch.arange(width, device=logits.device).view(1, 1, 1, width)
    inside = ((grid_r - rows[..., None, None]).abs() <= window) & ((grid_c - cols[..., None, None]).abs() <= window)
    local = probs * inside
    mass = local.flatten(2).sum(-1)
    y = (local * grid_r).flatten(2).sum(-1) / mass
    x = (local * grid_c).flatten(2).sum(-1) / mass
    points = torch.stack((x, y), dim=-1) * OUTPUT_STRIDE + (OUTPUT_STRIDE / 2 - 0.5)
    return points, mass.clamp(0.0, 1.0)

