"""The model card (README.md) beside each checkpoint, rendered by the Hub mixin from ``card_template.md``."""

from __future__ import annotations

from importlib.resources import files

from spinecad.models.registry import BackboneSpec

CARD_TEMPLATE = files("spinecad.models").joinpath("card_template.md").read_text(encoding="utf-8")
CARD_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "weighted_f1", "macro_roc_auc", "macro_pr_auc")


def card_values(spec: BackboneSpec, *, level_dim: int, temperature: float, training: dict,
                metrics: dict | None = None) -> dict:
    """The template's variables; ``metrics`` maps a split name to its metrics (an artefact ``Metrics``)."""
    return {
        "display_name": spec.display_name, "architecture": spec.architecture, "source": spec.source,
        "registry_name": spec.name, "pretraining": spec.pretraining, "input_size": spec.input_size,
        "mean": list(spec.mean), "std": list(spec.std), "interpolation": spec.interpolation, "note": spec.note,
        "level_dim": level_dim, "temperature": f"{temperature:g}",
        "training": [(key, value) for key, value in sorted(training.items()) if not isinstance(value, dict | list)],
        "demo": bool(training.get("demo")), "selection": training.get("selection"),
        "metric_names": list(CARD_METRICS),
        "metrics": [(split, [_cell(getattr(values, name)) for name in CARD_METRICS])
                    for split, values in (metrics or {}).items()],
    }


def _cell(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a"
