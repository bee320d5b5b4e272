"""One interface for every backbone, whatever its source (timm or transformers).

Each is an ``nn.Module`` with ``features(x) -> (B, D)``, ``num_features``, ``data_config``, ``layer_groups()``
(ordered input -> output, for partial unfreezing) and, for heatmaps, ``cam_layer()`` / ``cam_feature_map()`` (the
layer a class-activation map reads, as a (B, C, H, W) map). What differs between families is in the registry rows.
"""

from __future__ import annotations

import threading

import timm
import torch
from timm.models._manipulate import reinit_non_persistent_buffers
from torch import nn

from spinecad.models.preprocess import DataConfig
from spinecad.models.registry import (
    CAM_METHODS,
    CAM_RESHAPES,
    BackboneError,
    BackboneSpec,
    HeatmapUnavailable,
    PretrainedWeightsUnavailable,
    get_spec,
    registered,
)

_CAPTURE = threading.Lock()


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

    def init_non_persistent_buffers(self, device: str | torch.device = "cpu") -> None:
        """Give buffers left on the meta device (computed at build time, not saved) real memory on ``device``;
        a family that can recompute their values does so (``TimmBackbone``), the others leave them on meta."""

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
        known = registered(spec.name)
        if spec.cam_layer is None and known is not None and known.architecture == spec.architecture:
            spec = known
        if spec.cam_layer is None:
            raise HeatmapUnavailable(f"{spec.display_name} ({spec.name}): its registry row names no layer for "
                                     "heatmaps; add cam_layer (and cam_reshape) to the row to explain it.")
        if spec.cam_reshape not in CAM_RESHAPES or spec.cam_method not in CAM_METHODS:
            raise HeatmapUnavailable(f"{spec.display_name}: unknown cam_reshape {spec.cam_reshape!r} or cam_method "
                                     f"{spec.cam_method!r}; expected {CAM_RESHAPES} and {CAM_METHODS}.")
        return spec

    def features_with_map(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features (B, D) and the heatmap layer's feature map (B, C, H, W) from one forward pass; without
        such a layer, the pooled features as a 1 x 1 map."""
        try:
            layer = self.cam_layer()
        except HeatmapUnavailable:
            features = self.features(images)
            return features, features[:, :, None, None]
        captured: dict[str, torch.Tensor] = {}
        with _CAPTURE:  # a hook sees every call on its module: one capture at a time
            handle = layer.register_forward_hook(lambda module, args, output: captured.__setitem__("map", output))
            try:
                features = self.features(images)
            finally:
                handle.remove()
        return features, self.cam_feature_map(captured["map"])

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

    def init_non_persistent_buffers(self, device: str | torch.device = "cpu") -> None:
        for module in self.model.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.is_meta:
                    module._buffers[name] = torch.empty_like(buffer, device=device)
        reinit_non_persistent_buffers(self.model)  # timm's own: each module recomputes what it derived

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
        with torch.no_grad():  # on the parameters' device: meta while a checkpoint is being loaded
            probe = torch.zeros(1, 3, spec.input_size, spec.input_size, device=next(self.model.parameters()).device)
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
