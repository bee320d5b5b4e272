"""The model card (README.md) written beside each checkpoint: what it is, how it was trained, its metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData

if TYPE_CHECKING:
    from spinecad.model import SpineCADModel

_HEADLINE = ("accuracy", "macro_f1", "weighted_f1", "macro_roc_auc", "macro_pr_auc")


def render_model_card(model: SpineCADModel, card_data: ModelCardData, metrics: dict | None = None) -> ModelCard:
    """Build the card text; ``metrics`` maps a split name to a metrics dict (spinecad.metrics format)."""
    spec = model.config.backbone_spec
    training = model.config.training
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        f"# SpineCAD: {spec.display_name} spinal canal stenosis grader",
        "",
        "Grades spinal canal stenosis (Normal/Mild, Moderate, Severe) at one lumbar disc level (L1/L2..L5/S1)",
        "from a single axial T2 MRI slice: an image backbone, a 256-d disc-level embedding and an MLP head.",
        "**Research software, not a medical device: it does not diagnose.**",
        "",
        "| | |",
        "|---|---|",
        f"| Backbone | `{spec.architecture}` ({spec.source}), registry name `{spec.name}` |",
        f"| Pretrained on | {spec.pretraining} |",
        f"| Input | {spec.input_size} px, mean {list(spec.mean)}, std {list(spec.std)}, {spec.interpolation} |",
        f"| Temperature | {model.config.temperature:g} |",
    ]
    if spec.note:
        lines.append(f"| Note | {spec.note} |")
    for key, value in sorted(training.items()):
        if not isinstance(value, (dict, list)):
            lines.append(f"| Training: {key} | {value} |")
    if training.get("demo"):
        lines += ["", "**Demo weights trained on synthetic phantoms. They say nothing about real patients.**"]
    if metrics:
        header = "| split | " + " | ".join(_HEADLINE) + " |"
        lines += ["", "## Metrics", "", header, "|---" * (len(_HEADLINE) + 1) + "|"]
        for split, values in metrics.items():
            cells = [_fmt(values.get(name)) for name in _HEADLINE]
            lines.append(f"| {split} | " + " | ".join(cells) + " |")
        selection = training.get("selection")
        if selection:
            lines += ["", f"Best epoch chosen by {selection}."]
    lines += ["", "Load with `SpineCADModel.from_pretrained(repo_id, revision=...)` from the `spinecad` package."]
    return ModelCard("\n".join(lines) + "\n")


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a"
