"""The SpineCAD model: an image backbone, a 256-d disc-level embedding and an MLP head over both.

    logits = head(concat(backbone.features(image), level_embedding(level)))
    head   = [Linear -> LayerNorm -> GELU -> Dropout] x (512, 256) -> Linear(3)

Saved the Hugging Face way (``config.json`` + ``model.safetensors`` + model card) through
``PyTorchModelHubMixin``; loading is strict, safetensors-only, and never downloads ImageNet weights.
"""

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import safetensors.torch
import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin, hf_hub_download
from torch import nn

from spinecad.labels import LEVELS, SEVERITIES
from spinecad.logs import warn_once
from spinecad.models.backbones import build_backbone
from spinecad.models.card import CARD_TEMPLATE, card_values
from spinecad.models.preprocess import DataConfig
from spinecad.models.registry import BackboneError, BackboneSpec, get_spec

logger = logging.getLogger(__name__)

FORMAT = "spinecad-model/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the checkpoint and says why."""


@dataclass(frozen=True)
class HeadConfig:
    """The paper's head over the backbone features, stated once: the model builds it, the recipe chooses it."""

    level_dim: int = 256  # width of the disc-level embedding (paper: 256)
    hidden_dims: tuple[int, ...] = (512, 256)  # MLP widths (paper: 512 -> 256 -> 3)
    dropout: float = 0.3  # the paper does not state its rate


_HEAD_FIELDS = tuple(f.name for f in fields(HeadConfig))


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and preprocess its input; stored as config.json (head fields flat)."""

    backbone: dict  # a BackboneSpec as a dict, so a rebuild needs neither the registry nor the network
    head: HeadConfig = field(default_factory=HeadConfig)
    class_names: list[str] = field(default_factory=lambda: list(SEVERITIES))
    level_names: list[str] = field(default_factory=lambda: list(LEVELS))
    temperature: float = 1.0  # softmax temperature; 1.0 = uncalibrated
    # The unfamiliar-image threshold (spinecad.inference.familiarity) and how it was set; None = no statistics.
    familiarity: dict | None = None
    training: dict = field(default_factory=dict)  # facts about how the weights were made, when known
    format: str = FORMAT

    def to_dict(self) -> dict:
        """The config.json content: the head's fields at the top level, beside the backbone row."""
        values = asdict(self)
        head = values.pop("head")
        return {**values, **head, "hidden_dims": list(head["hidden_dims"])}

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Strictly decode a config.json dict: unknown fields are errors; a default filled in is logged."""
        values = dict(values)
        known = (set(cls.__dataclass_fields__) - {"head"}) | set(_HEAD_FIELDS)
        unknown = sorted(set(values) - known)
        if unknown:
            raise CheckpointError(f"config.json has unknown fields: {', '.join(unknown)}.")
        if not isinstance(values.get("backbone"), dict):
            raise CheckpointError("config.json does not describe a backbone (an object with its registry row).")
        if values.get("format", FORMAT) != FORMAT:
            raise CheckpointError(f"config.json has format {values.get('format')!r}; this version reads {FORMAT!r}.")
        defaulted = sorted(known - {"backbone", "familiarity"} - set(values))
        if defaulted:
            warn_once(logger, f"config.json of {values['backbone'].get('name')!r} has no {', '.join(defaulted)}; "
                              "the defaults are used.")
        head = {name: values.pop(name) for name in _HEAD_FIELDS if name in values}
        if "hidden_dims" in head:
            head["hidden_dims"] = tuple(head["hidden_dims"])
        return cls(head=HeadConfig(**head), **values)

    @property
    def backbone_spec(self) -> BackboneSpec:
        return BackboneSpec.from_dict(self.backbone)

    @property
    def data_config(self) -> DataConfig:
        return self.backbone_spec.data_config


class SpineCADModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="spinecad",
    model_card_template=CARD_TEMPLATE,
    tags=["medical-imaging", "mri", "lumbar-spine", "spinal-canal-stenosis"],
    license="apache-2.0",
    pipeline_tag="image-classification",
):
    """Backbone + level embedding + MLP head; ``forward(images, levels)`` gives (B, 3) logits."""

    def __init__(self, config: ModelConfig | dict) -> None:
        super().__init__()
        self.config = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
        self.backbone = build_backbone(self.config.backbone_spec)
        head = self.config.head
        self.level_embedding = nn.Embedding(len(self.config.level_names), head.level_dim)
        layers: list[nn.Module] = []
        width = self.backbone.num_features + head.level_dim
        for hidden in head.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(head.dropout)]
            width = hidden
        layers.append(nn.Linear(width, len(self.config.class_names)))
        self.classifier = nn.Sequential(*layers)

    @classmethod
    def build(cls, backbone: str, head: HeadConfig | None = None, **config_values) -> "SpineCADModel":
        """A fresh, randomly initialised model for a registry backbone name."""
        return cls(ModelConfig(backbone=get_spec(backbone).to_dict(), head=head or HeadConfig(), **config_values))

    @property
    def data_config(self) -> DataConfig:
        return self.config.data_config

    @property
    def display_name(self) -> str:
        return str(self.config.backbone["display_name"])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, D): the expensive half, shared by all five levels."""
        return self.backbone.features(images)

    def head(self, features: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """Logits (B, 3) for each feature row at its level id: the cheap half."""
        return self.classifier(torch.cat([features, self.level_embedding(levels)], dim=1))

    def head_all_levels(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, 3) for every level from one set of features."""
        batch, n_levels = features.shape[0], len(self.config.level_names)
        levels = torch.arange(n_levels, device=features.device).repeat(batch)
        return self.head(features.repeat_interleave(n_levels, dim=0), levels).view(batch, n_levels, -1)

    def forward(self, images: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images), levels)

    # ---- Hub format -------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path, *, config: dict | None = None, **kwargs):
        """The mixin's save, with config.json written from the config as it is now (e.g. a fitted temperature)."""
        return super().save_pretrained(save_directory, config=config or self.config.to_dict(), **kwargs)

    def generate_model_card(self, *args, metrics: dict | None = None, **kwargs) -> ModelCard:
        """The mixin's card from our template: what the model is, how it was trained, its metrics when known."""
        config = self.config
        values = card_values(config.backbone_spec, level_dim=config.head.level_dim, temperature=config.temperature,
                             training=config.training, metrics=metrics)
        return super().generate_model_card(*args, **values, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs,
    ) -> "SpineCADModel":
        if "config" not in model_kwargs or not isinstance(model_kwargs["config"], (dict, ModelConfig)):
            raise CheckpointError(f"{model_id}: no readable config.json.")
        if not strict:
            raise CheckpointError("SpineCAD checkpoints load strictly; strict=False is not supported.")
        config = model_kwargs.pop("config")
        with torch.device("meta"):  # no memory and no random initialisation: every tensor comes from the file
            model = cls(config)
        if os.path.isdir(model_id):
            weights = os.path.join(model_id, WEIGHTS_FILE)
            if not os.path.isfile(weights):
                raise CheckpointError(f"{model_id}: no {WEIGHTS_FILE} (only safetensors weights are loaded).")
        else:  # only ever the safetensors file: a pickle from the Hub is never unpickled
            weights = hf_hub_download(
                repo_id=model_id, filename=WEIGHTS_FILE, revision=revision, cache_dir=cache_dir,
                force_download=force_download, token=token, local_files_only=local_files_only,
            )
        state = safetensors.torch.load_file(weights, device=str(map_location))
        _check_state_dict(model, state)
        model.load_state_dict(state, strict=True, assign=True)  # the file's tensors become the parameters: no copy
        model.backbone.init_non_persistent_buffers(map_location)
        if any(t.is_meta for t in model.buffers()):  # a module that cannot recompute its buffers: build it fully
            warn_once(logger, f"{model.display_name}: its backbone cannot be built on the meta device; it is "
                              "initialised, then loaded (slower start).")
            model = cls(config)
            model.load_state_dict(state, strict=True)
        return model.eval()

    @classmethod
    def load(
        cls,
        source: str | Path,
        revision: str | None = None,
        *,
        map_location: str = "cpu",
        local_files_only: bool = False,
        cache_dir: str | Path | None = None,
    ) -> "SpineCADModel":
        """Load from a local folder or a Hub repo id at a pinned revision; any failure is a CheckpointError."""
        name = str(source) + (f"@{revision}" if revision else "")
        try:
            return cls.from_pretrained(
                str(source), revision=revision, map_location=map_location,
                local_files_only=local_files_only, cache_dir=cache_dir,
            )
        except CheckpointError as error:
            raise CheckpointError(f"{name}: {error}" if name not in str(error) else str(error)) from None
        except BackboneError as error:
            raise CheckpointError(f"{name}: {error}") from None
        except json.JSONDecodeError:
            raise CheckpointError(f"{name}: config.json is not valid JSON (truncated or corrupt).") from None
        except safetensors.SafetensorError as error:
            raise CheckpointError(f"{name}: {WEIGHTS_FILE} is truncated or corrupt ({error}).") from None
        except (OSError, ValueError, TypeError, RuntimeError) as error:
            raise CheckpointError(f"{name}: {type(error).__name__}: {error}") from None


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Missing, unexpected or mis-shaped tensors are errors that name the first offenders."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        first = mismatched[0]
        problems.append(
            f"{len(mismatched)} tensors of the wrong shape (e.g. {first}: checkpoint "
            f"{tuple(state[first].shape)}, model {tuple(expected[first].shape)})"
        )
    if problems:
        raise CheckpointError("weights do not match the config: " + "; ".join(problems) + ".")
