"""The disc-level localiser in the Compare tab: its error table per level and its points drawn on test slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from spinecad.evaluation import store
from spinecad.evaluation.artefacts import LocalizerDocument, PointErrors
from spinecad.labels import LEVELS

LEVEL_COLOURS: dict[str, str] = dict(zip(LEVELS, ("#0072B2", "#009E73", "#E69F00", "#CC79A7", "#D55E00"),
                                         strict=True))
EXPLAINED = (
    "Each level's canal point as the localiser puts it on the sagittal slice (crosses), against the labelled one "
    "(rings), on a few test studies. **Error** "
    "is the distance in mm (PixelSpacing applied); **same axial slice** is the share of levels whose point maps, "
    "by DICOM geometry, to the axial slice the labelled point maps to, which is what the grade depends on. A "
    "**mix-up** is a point nearer the neighbouring disc's labelled point than its own: the costly error, since "
    "that level would be graded on the wrong disc. Levels below the confidence threshold are left for the user "
    "to place."
)


def localizer_keys(root: Path | None) -> list[str]:
    """The localisers whose artefacts an evaluation root holds, by key."""
    folder = None if root is None else Path(root) / "localizers"
    return sorted(path.name for path in folder.iterdir() if path.is_dir()) if folder and folder.is_dir() else []


def _row(name: str, errors: PointErrors) -> dict:
    def mm(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    same = "n/a" if errors.same_axial is None else f"{100 * errors.same_axial:.1f}% of {errors.n_axial}"
    return {"level": name, "levels": errors.n, "mean error (mm)": mm(errors.mean_mm),
            "median (mm)": mm(errors.median_mm), "90th percentile (mm)": mm(errors.p90_mm),
            "same axial slice": same, "neighbour mix-ups": errors.neighbour_mixups,
            "below confidence": errors.below_min_confidence}


def error_table(document: LocalizerDocument) -> pd.DataFrame:
    """One row per level, then all levels together."""
    rows = [_row(level, errors) for level, errors in document.per_level.items()]
    return pd.DataFrame([*rows, _row("all levels", document.overall)])


def slice_rule_note(document: LocalizerDocument) -> str:
    """A line on the sagittal slice rule and the confidence threshold."""
    threshold = f"Confidence threshold {document.min_confidence:g} (set on the validation split)."
    rule = document.slice_rule
    if rule is None:
        return threshold
    return (f"{threshold} Slice rule ({rule.rule}): the labelled slice in {100 * (rule.exact or 0):.0f}% of "
            f"{rule.n_studies} studies, it or its neighbour in {100 * (rule.within_one or 0):.0f}%.")


def points_figure(root: Path, key: str, split: str, document: LocalizerDocument) -> go.Figure:
    """The example slices side by side: labelled points as rings, predicted points as crosses, one colour a level."""
    points = store.load_localizer_points(root, key, split)
    studies = [s for s in document.examples if store.localizer_example_path(root, key, split, s).is_file()]
    figure = make_subplots(rows=1, cols=max(len(studies), 1), horizontal_spacing=0.02,
                           subplot_titles=[f"study {s}" for s in studies] or [""])
    legend: set[str] = set()  # each level named once, where it is first drawn
    for column, study in enumerate(studies, start=1):
        with Image.open(store.localizer_example_path(root, key, split, study)) as image:
            pixels = np.asarray(image.convert("L"))
        figure.add_trace(go.Heatmap(z=pixels, colorscale="gray", showscale=False, hoverinfo="skip"),
                         row=1, col=column)
        rows = points[points["study_id"] == study]
        for level in LEVELS:
            at = rows[rows["level"] == level]
            if at.empty:
                continue
            first, colour = level not in legend, LEVEL_COLOURS[level]
            legend.add(level)
            figure.add_trace(go.Scatter(
                x=at["x_true"], y=at["y_true"], mode="markers", name=f"{level} labelled", legendgroup=level,
                legendrank=2 * LEVELS.index(level),
                showlegend=first, marker={"symbol": "circle-open", "size": 14, "color": colour, "line": {"width": 3}},
                hovertemplate=f"{level} labelled<extra></extra>"), row=1, col=column)
            figure.add_trace(go.Scatter(
                x=at["x_pred"], y=at["y_pred"], mode="markers", name=f"{level} predicted", legendgroup=level,
                legendrank=2 * LEVELS.index(level) + 1,
                showlegend=first, marker={"symbol": "x-thin", "size": 12, "line": {"width": 3, "color": colour}},
                customdata=np.column_stack([at["error_mm"], at["confidence"]]),
                hovertemplate=f"{level} predicted: %{{customdata[0]:.1f}} mm off, confidence "
                              "%{customdata[1]:.2f}<extra></extra>"), row=1, col=column)
        figure.update_yaxes(autorange="reversed", scaleanchor=f"x{column if column > 1 else ''}", visible=False,
                            row=1, col=column)
        figure.update_xaxes(visible=False, row=1, col=column)
    if not studies:
        figure.add_annotation(text="No example slices stored with this evaluation.", showarrow=False,
                              x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_layout(template="plotly_white", font={"size": 15}, height=420,
                         margin={"l": 10, "r": 10, "t": 40, "b": 10},
                         legend={"orientation": "h", "y": -0.02, "yanchor": "top"})
    return figure
