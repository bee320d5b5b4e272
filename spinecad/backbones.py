"""The backbone registry: one table of named image backbones behind one interface.

Every backbone, whatever its source (timm or transformers), is an ``nn.Module`` with ``features(x) -> (B, D)``,
``num_features``, ``data_config``, ``layer_groups()`` (ordered input -> output, for partial unfreezing) and, for
heatmaps, ``cam_layer()`` / ``cam_feature_map()`` (the layer a class-activation map reads, as a (B, C, H, W) map).
Architecture differences live in the table rows below and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import timm
import torch
from torch import nn

from spinecad.preprocess import DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
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
    channels_last: bool = False  # CNNs run faster channels-last on CUDA
    kwargs: dict = field(default_factory=dict)  # timm create_model overrides / transformers config
    note: str = ""
    cam_layer: str | None = None  # module path in the timm model for heatmaps, e.g. "layer4" or "blocks.-1.norm1"
    cam_reshape: str | None = None  # one of CAM_RESHAPES
    cam_method: str = "gradcam"  # one of CAM_METHODS

    # Fields that change only how a model is explained, never how it is trained or what it predicts.
    EXPLANATION_FIELDS = ("cam_layer", "cam_reshape", "cam_method")

    @property
    def data_config(self) -> DataConfig:
        return DataConfig(self.input_size, self.mean, self.std, self.interpolation)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> BackboneSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise BackboneError(f"Backbone spec has unknown fields: {', '.join(sorted(unknown))}.")
        values = dict(values)
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        # A config.json written before heatmaps existed has no cam_* fields: they take their defaults.
        return cls(**values)

    def training_dict(self) -> dict:
        """``to_dict`` without the explanation fields: what decides training (resume fingerprints use it)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.EXPLANATION_FIELDS}


# The paper's six backbones (ImageNet-pretrained, 224 px). Normalisation is each weight set's own.
# Heatmaps read the ViTs' last block before its attention (the class token gathers the patches there) and the
# hierarchical models' last stage (7 x 7 at 224 px).
PAPER_PROFILE: tuple[BackboneSpec, ...] = (
    BackboneSpec("vit_b16", "ViT-B/16", "timm", "vit_base_patch16_224", "augreg_in1k", "ImageNet-1k",
                 224, HALF, HALF, "bicubic",
                 cam_layer="blocks.-1.norm1", cam_reshape="tokens", cam_method="gradcam"),
    BackboneSpec("swin_b", "Swin-B", "timm", "swin_base_patch4_window7_224", "ms_in1k", "ImageNet-1k",
                 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic",
                 cam_layer="layers.-1", cam_reshape="nhwc", cam_method="hirescam"),
    BackboneSpec("beit_b", "BEiT-B", "timm", "beit_base_patch16_224", "in22k_ft_in22k_in1k",
                 "ImageNet-22k, fine-tuned on 22k then 1k", 224, HALF, HALF, "bicubic",
                 note="timm has no ImageNet-1k-only BEiT-B weights; this is the closest tag.",
                 cam_layer="blocks.-1.norm1", cam_reshape="tokens", cam_method="hirescam"),
    BackboneSpec("efficientnetv2_m", "EfficientNetV2-M", "timm", "tf_efficientnetv2_m", "in1k", "ImageNet-1k",
                 224, HALF, HALF, "bicubic", channels_last=True,
                 note="Weights were trained at 384 px; the paper feeds 224 px like the other five.",
                 cam_layer="bn2", cam_method="hirescam"),
    BackboneSpec("resnet152", "ResNet-152", "timm", "resnet152", "tv_in1k", "ImageNet-1k (torchvision weights)",
                 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", channels_last=True,
                 cam_layer="layer4", cam_method="hirescam"),
    BackboneSpec("convnext_b", "ConvNeXt-B", "timm", "convnext_base", "fb_in1k", "ImageNet-1k",
                 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic", channels_last=True,
                 cam_layer="stages.-1", cam_method="hirescam"),
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
CPU_INPUT_SIZE = 128
CPU_PROFILE: tuple[BackboneSpec, ...] = tuple(
    replace(spec, name=spec.name + CPU_SUFFIX, pretrained_tag=None, pretraining="none (random init)",
            input_size=CPU_INPUT_SIZE, kwargs=_CPU_OVERRIDES[spec.name],
            note="Shrunk CPU sibling for tests and the phantom demo; not the paper's model.",
            cam_layer=_CPU_CAM_LAYERS.get(spec.name, spec.cam_layer))
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


def get_spec(name: str) -> BackboneSpec:
    """Look a backbone up by registry name; ``hf:<model id>`` builds a transformers row on the fly."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(HF_PREFIX):
        return register(transformers_spec(name[len(HF_PREFIX):]))
    known = ", ".join(sorted(_REGISTRY))
    raise BackboneError(f"Unknown backbone {name!r}. Known: {known}; or 'hf:<Hugging Face model id>'.")


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


class Backbone(nn.Module):
    """Common interface: ``features(x) -> (B, D)``, ``num_features``, ``data_config``, ``layer_groups()``."""

    spec: BackboneSpec
    num_features: int

    @property
    def data_config(self) -> DataConfig:
        return self.spec.data_config

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def load_pretrained_weights(self) -> None:
        """Fetch the spec's pretrained weights (Hub or cache) into this backbone."""
        raise NotImplementedError

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters grouped by the module that owns them, ordered input -> output ("layers" to unfreeze)."""
        groups: dict[str, list[nn.Parameter]] = {}
        for name, parameter in self.named_parameters():
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            groups.setdefault(owner, []).append(parameter)
        return list(groups.values())

    def cam_spec(self) -> BackboneSpec:
        """The row whose cam_* fields apply: this spec's, or for a checkpoint saved before heatmaps existed the
        registry's row of the same name and architecture. HeatmapUnavailable when neither names a layer."""
        spec = self.spec
        if spec.cam_layer is None and spec.name in _REGISTRY and _REGISTRY[spec.name].architecture == spec.architecture:
            spec = _REGISTRY[spec.name]
        if spec.cam_layer is None:
            raise HeatmapUnavailable(f"{spec.display_name} ({spec.name}): its registry row names no layer for "
                                     "heatmaps; add cam_layer (and cam_reshape) to the row to explain it.")
        if spec.cam_reshape not in CAM_RESHAPES or spec.cam_method not in CAM_METHODS:
            raise HeatmapUnavailable(f"{spec.display_name}: unknown cam_reshape {spec.cam_reshape!r} or cam_method "
                                     f"{spec.cam_method!r}; expected {CAM_RESHAPES} and {CAM_METHODS}.")
        return spec

    def cam_layer(self) -> nn.Module:
        """The module whose output a class-activation map reads."""
        raise HeatmapUnavailable(f"{self.spec.display_name} ({self.spec.name}): heatmaps are not supported for "
                                 f"{self.spec.source} backbones.")

    def cam_feature_map(self, output: torch.Tensor) -> torch.Tensor:
        """``cam_layer()``'s output (or its gradient) as a (B, C, H, W) map."""
        raise HeatmapUnavailable(f"{self.spec.display_name}: heatmaps are not supported for {self.spec.source}.")


class TimmBackbone(Backbone):
    """A timm model with its classifier removed (``num_classes=0`` gives pooled features)."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.spec = spec
        self.model = timm.create_model(spec.architecture, pretrained=False, num_classes=0, **spec.kwargs)
        self.num_features = int(self.model.num_features)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def cam_layer(self) -> nn.Module:
        path = self.cam_spec().cam_layer
        module: nn.Module = self.model
        try:
            for part in path.split("."):
                module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
        except (AttributeError, IndexError, TypeError):
            raise HeatmapUnavailable(f"{self.spec.display_name}: {self.spec.architecture} has no module "
                                     f"{path!r} (cam_layer of its registry row).") from None
        return module

    def cam_feature_map(self, output: torch.Tensor) -> torch.Tensor:
        kind = self.cam_spec().cam_reshape
        if kind == "nhwc":
            return output.permute(0, 3, 1, 2)
        if kind == "tokens":
            # The patch grid comes from the model (input size / patch size); the tokens before it are class or
            # register tokens, which have no place in the image.
            rows, cols = self.model.patch_embed.grid_size
            patches = output[:, output.shape[1] - rows * cols:, :]
            return patches.reshape(output.shape[0], rows, cols, output.shape[2]).permute(0, 3, 1, 2)
        return output

    def load_pretrained_weights(self) -> None:
        if not self.spec.pretrained_tag:
            name = f"{self.spec.display_name} ({self.spec.name})"
            raise PretrainedWeightsUnavailable(f"{name} has no pretrained weights.")
        tagged = f"{self.spec.architecture}.{self.spec.pretrained_tag}"
        try:
            pretrained = timm.create_model(tagged, pretrained=True, num_classes=0, **self.spec.kwargs)
        except Exception as error:  # noqa: BLE001 - offline / cache miss surfaces as many error types
            raise PretrainedWeightsUnavailable(_offline_message(tagged, error)) from None
        self.model.load_state_dict(pretrained.state_dict())


class TransformersBackbone(Backbone):
    """A Hugging Face transformers vision model; features are its pooled output (or the first token)."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.spec = spec
        config_values = dict(spec.kwargs["config"])
        config = AutoConfig.for_model(config_values.pop("model_type"), **config_values)
        self.model = AutoModel.from_config(config)
        with torch.no_grad():
            probe = torch.zeros(1, 3, spec.input_size, spec.input_size)
            self.num_features = int(self.features(probe).shape[1])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.model(pixel_values=images)
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            pooled = outputs.last_hidden_state[:, 0]
        return pooled.flatten(1)

    def load_pretrained_weights(self) -> None:
        from transformers import AutoModel

        try:
            pretrained = AutoModel.from_pretrained(self.spec.architecture, use_safetensors=True)
        except Exception as error:  # noqa: BLE001
            raise PretrainedWeightsUnavailable(_offline_message(self.spec.architecture, error)) from None
        self.model.load_state_dict(pretrained.state_dict())


_BUILDERS: dict[str, type[Backbone]] = {"timm": TimmBackbone, "transformers": TransformersBackbone}


def build_backbone(spec: BackboneSpec | str) -> Backbone:
    """Build a randomly initialised backbone (never downloads weights; see ``load_pretrained_weights``)."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if spec.source not in _BUILDERS:
        raise BackboneError(f"Backbone {spec.name!r} names an unknown source {spec.source!r}.")
    try:
        return _BUILDERS[spec.source](spec)
    except BackboneError:
        raise
    except Exception as error:  # noqa: BLE001 - a bad architecture name or override from a config file
        raise BackboneError(f"Could not build backbone {spec.name!r} ({spec.architecture}): {error}") from None


def _offline_message(what: str, error: Exception) -> str:
    return (
        f"Pretrained weights for {what} could not be loaded ({type(error).__name__}). They come from the "
        "Hugging Face Hub: connect to the internet once (they are cached), set HF_HOME to a cache that has them, "
        "or train from random initialisation with --no-pretrained."
    )
