"""The backbone registry: one table of named image backbones, each row stating only what the paper chooses.

A row names the architecture, its pretrained weight tag, the input size the paper feeds (224 px) and the layer a
heatmap reads. Normalisation and interpolation are the weights' own, read from timm's pretrained config (offline:
the configs ship with timm), so a row never restates them. Architecture differences live here and nowhere else.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace

from spinecad.logs import warn_once
from spinecad.models.preprocess import DataConfig

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CPU_SUFFIX = "-cpu"
HF_PREFIX = "hf:"


class BackboneError(ValueError):
    """An unknown backbone name, or a spec that cannot be built."""


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights could not be fetched (offline and not in the Hugging Face cache)."""


class HeatmapUnavailable(BackboneError):
    """The backbone's row names no layer for class-activation maps (e.g. a transformers backbone)."""


# How a CAM layer's output becomes a (B, C, H, W) map: None = already one (CNN stages); "tokens" = (B, N, C) with
# class/prefix tokens first (ViT, BEiT); "nhwc" = (B, H, W, C) (timm's Swin).
CAM_RESHAPES: tuple[str | None, ...] = (None, "tokens", "nhwc")
# "gradcam" weights each channel by its mean gradient (the class token of a ViT pools through attention, so only
# averaged gradients see the patches); "hirescam" multiplies gradient and activation at each location, which for
# a globally pooled feature map is that location's own contribution to the score.
CAM_METHODS: tuple[str, ...] = ("gradcam", "hirescam")


@dataclass(frozen=True)
class BackboneSpec:
    """One registry row: where a backbone comes from and how it wants its input."""

    name: str  # registry key, e.g. "vit_b16" or its CPU sibling "vit_b16-cpu"
    display_name: str  # what people read, e.g. "ViT-B/16"
    source: str  # "timm" or "transformers"
    architecture: str  # timm model name, or a Hugging Face model id for transformers
    pretrained_tag: str | None  # timm weight tag; None where no pretrained weights fit (CPU profile)
    pretraining: str  # what the pretrained weights were trained on, said plainly
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    # CNNs run faster channels-last on CUDA; on the CPU it gave no stable gain (bench/alternatives.py), so only there.
    channels_last: bool = False
    kwargs: dict = field(default_factory=dict)  # timm create_model overrides / transformers config
    note: str = ""
    cam_layer: str | None = None  # module path in the timm model for heatmaps, e.g. "layer4" or "blocks.-1.norm1"
    cam_reshape: str | None = None  # one of CAM_RESHAPES
    cam_method: str = "gradcam"  # one of CAM_METHODS
    # Whether CPU inference may run under bf16 autocast (on CPUs with native bf16), decided by the measured
    # agreement of its probabilities with fp32 (bench/predict.py); None = not measured, so fp32.
    cpu_bf16: bool | None = None

    # Fields that change only how a model is explained, never how it is trained or what it predicts.
    EXPLANATION_FIELDS = ("cam_layer", "cam_reshape", "cam_method")
    # Fields that change only the arithmetic of inference, never training.
    INFERENCE_FIELDS = ("cpu_bf16",)

    @property
    def data_config(self) -> DataConfig:
        return DataConfig(self.input_size, self.mean, self.std, self.interpolation)

    @property
    def family(self) -> str:
        """The paper row a CPU sibling shrinks, e.g. "vit_b16" for "vit_b16-cpu"."""
        return self.name.removesuffix(CPU_SUFFIX)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> BackboneSpec:
        """A row from config.json; unknown fields are refused, missing explanation fields take defaults (logged)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise BackboneError(f"Backbone spec has unknown fields: {', '.join(sorted(unknown))}.")
        missing = [name for name in cls.EXPLANATION_FIELDS if name not in values]
        if missing:
            warn_once(logger, f"Backbone {values.get('name')!r}: config.json has no {', '.join(missing)} (written "
                              "before heatmaps existed); heatmaps use the registry row of the same name if any.")
        values = dict(values)
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        return cls(**values)

    def training_dict(self) -> dict:
        """``to_dict`` without the explanation and inference fields: what decides training (resume fingerprints)."""
        skipped = self.EXPLANATION_FIELDS + self.INFERENCE_FIELDS
        return {k: v for k, v in self.to_dict().items() if k not in skipped}


def timm_row(name: str, display_name: str, architecture: str, pretrained_tag: str, pretraining: str, *,
             input_size: int = 224, **paper_choices) -> BackboneSpec:
    """A timm row: normalisation and interpolation from the tagged weights' pretrained config, the rest given."""
    import timm

    config = timm.get_pretrained_cfg(f"{architecture}.{pretrained_tag}")
    if config is None:
        raise BackboneError(f"timm has no pretrained config for {architecture}.{pretrained_tag}.")
    return BackboneSpec(name, display_name, "timm", architecture, pretrained_tag, pretraining, input_size,
                        tuple(config.mean), tuple(config.std), config.interpolation, **paper_choices)


# The paper's six backbones (ImageNet-pretrained, 224 px as the paper feeds every model).
# cpu_bf16 (bench/agreement.py; no trained paper weights here): the seeded random-init backbone under a head
# trained on its own phantom features moves max |p| by <= 0.001 in bf16, its features by <= 1.2%; EfficientNetV2-M's
# features move by ~150% (its CPU sibling's trained probabilities by 0.046), so it stays fp32.
# Heatmaps read the ViTs' last block before its attention (the class token gathers the patches there) and the
# hierarchical models' last stage (7 x 7 at 224 px).
PAPER_PROFILE: tuple[BackboneSpec, ...] = (
    timm_row("vit_b16", "ViT-B/16", "vit_base_patch16_224", "augreg_in1k", "ImageNet-1k",
             cam_layer="blocks.-1.norm1", cam_reshape="tokens", cam_method="gradcam", cpu_bf16=True),
    timm_row("swin_b", "Swin-B", "swin_base_patch4_window7_224", "ms_in1k", "ImageNet-1k",
             cam_layer="layers.-1", cam_reshape="nhwc", cam_method="hirescam", cpu_bf16=True),
    timm_row("beit_b", "BEiT-B", "beit_base_patch16_224", "in22k_ft_in22k_in1k",
             "ImageNet-22k, fine-tuned on 22k then 1k",
             note="timm has no ImageNet-1k-only BEiT-B weights; this is the closest tag.",
             cam_layer="blocks.-1.norm1", cam_reshape="tokens", cam_method="hirescam", cpu_bf16=True),
    timm_row("efficientnetv2_m", "EfficientNetV2-M", "tf_efficientnetv2_m", "in1k", "ImageNet-1k",
             channels_last=True, note="Weights were trained at 384 px; the paper feeds 224 px like the other five.",
             cam_layer="bn2", cam_method="hirescam", cpu_bf16=False),
    timm_row("resnet152", "ResNet-152", "resnet152", "tv_in1k", "ImageNet-1k (torchvision weights)",
             channels_last=True, cam_layer="layer4", cam_method="hirescam", cpu_bf16=True),
    timm_row("convnext_b", "ConvNeXt-B", "convnext_base", "fb_in1k", "ImageNet-1k",
             channels_last=True, cam_layer="stages.-1", cam_method="hirescam", cpu_bf16=True),
)

# The same six families shrunk through timm's keyword overrides: same code paths, seconds on a CPU.
_CPU_OVERRIDES: dict[str, dict] = {
    "vit_b16": dict(img_size=128, depth=2, embed_dim=64, num_heads=2),
    "swin_b": dict(img_size=128, window_size=4, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)),
    "beit_b": dict(img_size=128, depth=2, embed_dim=64, num_heads=2),
    "efficientnetv2_m": dict(channel_multiplier=0.2, depth_multiplier=0.15),
    "resnet152": dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=16),
    "convnext_b": dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), patch_size=2),
}
# At 128 px the hierarchical models' last stage is 4 x 4, too coarse to place a canal a few pixels wide: their CPU
# siblings explain the stride-16 stage instead (8 x 8, the paper models' 7 x 7 grid). The ViTs keep their 8 x 8.
_CPU_CAM_LAYERS: dict[str, str] = {
    "swin_b": "layers.-2", "efficientnetv2_m": "blocks.-3", "resnet152": "layer3", "convnext_b": "stages.-2",
}
# cpu_bf16 from the committed demo set (bench/agreement.py): max |p_bf16 - p_fp32| over 120 phantom slices and the
# example files is <= 0.013 for these four; EfficientNetV2-M (0.046) and ResNet-152 (0.025 on severe_axial.dcm) stay
# fp32. (At this size bf16 is no faster than fp32; the rows follow the agreement, as for the paper rows.)
_CPU_BF16 = {"vit_b16": True, "swin_b": True, "beit_b": True, "efficientnetv2_m": False, "resnet152": False,
             "convnext_b": True}
CPU_INPUT_SIZE = 128
CPU_PROFILE: tuple[BackboneSpec, ...] = tuple(
    replace(spec, name=spec.name + CPU_SUFFIX, pretrained_tag=None, pretraining="none (random init)",
            input_size=CPU_INPUT_SIZE, kwargs=_CPU_OVERRIDES[spec.name],
            note="Shrunk CPU sibling for tests and the phantom demo; not the paper's model.",
            cam_layer=_CPU_CAM_LAYERS.get(spec.name, spec.cam_layer), cpu_bf16=_CPU_BF16[spec.name])
    for spec in PAPER_PROFILE
)

PROFILES: dict[str, tuple[BackboneSpec, ...]] = {"paper": PAPER_PROFILE, "cpu": CPU_PROFILE}
_REGISTRY: dict[str, BackboneSpec] = {spec.name: spec for spec in PAPER_PROFILE + CPU_PROFILE}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a row to the registry (e.g. a seventh model); refuses to overwrite an existing name."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise BackboneError(f"A different backbone is already registered as {spec.name!r}.")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    """Every registered backbone name, in registration order (the paper's six, their CPU siblings, then any added)."""
    return list(_REGISTRY)


def registered(name: str) -> BackboneSpec | None:
    """The registry's row called ``name``, or None (no ``hf:`` lookup, no error)."""
    return _REGISTRY.get(name)


def get_spec(name: str) -> BackboneSpec:
    """Look a backbone up by registry name; ``hf:<model id>`` builds a transformers row on the fly."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(HF_PREFIX):
        return register(transformers_spec(name[len(HF_PREFIX):]))
    known = ", ".join(sorted(_REGISTRY))
    raise BackboneError(f"Unknown backbone {name!r}. Known: {known}; or 'hf:<Hugging Face model id>'.")


def cpu_bf16_allowed(spec: BackboneSpec) -> bool:
    """Whether ``spec`` may run CPU inference in bf16: its own ``cpu_bf16``, else the verdict of the registry row
    of the same name and architecture (a checkpoint saved before the field existed), else no."""
    if spec.cpu_bf16 is not None:
        return spec.cpu_bf16
    known = registered(spec.name)
    return bool(known is not None and known.architecture == spec.architecture and known.cpu_bf16)


def profile(name: str) -> tuple[BackboneSpec, ...]:
    """The six backbones of a profile: "paper" or "cpu"."""
    if name not in PROFILES:
        raise BackboneError(f"Unknown profile {name!r}; expected one of {', '.join(PROFILES)}.")
    return PROFILES[name]


def transformers_spec(
    model_id: str,
    *,
    config: dict | None = None,
    display_name: str | None = None,
    input_size: int | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> BackboneSpec:
    """A row for any Hugging Face image backbone; its architecture config is stored so rebuilds stay offline.

    ``config`` (a transformers config dict with ``model_type``) skips the Hub, e.g. for tiny random test models.
    """
    from transformers import AutoConfig

    if config is None:
        try:
            config = AutoConfig.from_pretrained(model_id).to_dict()
        except OSError as error:
            raise BackboneError(
                f"Could not fetch the config of {model_id!r} from the Hugging Face Hub or its cache: {error}"
            ) from None
    size = input_size or int(config.get("image_size", 224))
    return BackboneSpec(
        name=HF_PREFIX + model_id, display_name=display_name or model_id.split("/")[-1], source="transformers",
        architecture=model_id, pretrained_tag="hub", pretraining=f"as published in {model_id}",
        input_size=size, mean=mean, std=std, interpolation="bicubic", kwargs={"config": config},
    )
