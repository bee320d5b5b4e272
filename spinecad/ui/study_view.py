"""What the Study tab draws: the clickable sagittal slice with its level markers, an axial slice, the per-level
table and the stenosis profile along the axial stack. Images are inline PNGs: no copy of a slice lands on disk."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from spinecad.inference.study import LevelHeatmaps
from spinecad.labels import LEVELS, SEVERITIES
from spinecad.ui.charts import ENSEMBLE_COLOUR, FONT, GRADE_COLOURS, MODEL_PALETTE
from spinecad.ui.html import heatmap_gallery_html, png_data_uri

# Clicks on the sagittal image become (x, y) in the slice's own pixels, sent to the server as a click event.
CLICK_JS = """
element.addEventListener('click', (event) => {
  const img = element.querySelector('img.spinecad-clickable');
  if (!img) return;
  const box = img.getBoundingClientRect();
  if (event.clientX < box.left || event.clientX > box.right || event.clientY < box.top || event.clientY > box.bottom)
    return;
  const width = Number(img.dataset.width), height = Number(img.dataset.height);
  trigger('click', {x: (event.clientX - box.left) / box.width * width - 0.5,
                    y: (event.clientY - box.top) / box.height * height - 0.5});
});
"""
LEVEL_COLOURS = dict(zip(LEVELS, MODEL_PALETTE, strict=False))


def sagittal_html(pixels: np.ndarray, points: dict[str, tuple[float, float]], caption: str) -> str:
    """The sagittal slice with a labelled marker per placed level; clicking it places the chosen level."""
    rows, columns = pixels.shape
    radius = max(rows, columns) / 90
    marks = "".join(
        f'<circle cx="{x + 0.5:.1f}" cy="{y + 0.5:.1f}" r="{radius:.1f}" fill="none" stroke="{LEVEL_COLOURS[level]}" '
        f'stroke-width="{radius / 2.5:.1f}"/><text x="{x + 2.2 * radius:.1f}" y="{y + radius:.1f}" '
        f'fill="{LEVEL_COLOURS[level]}" font-size="{3.2 * radius:.0f}" font-weight="bold">{html.escape(level)}</text>'
        for level, (x, y) in points.items()
    )
    return (
        '<figure class="spinecad-preview spinecad-sagittal">'
        '<div style="position:relative;width:100%;max-width:440px;margin:0 auto;line-height:0">'
        f'<img class="spinecad-clickable" src="{png_data_uri(pixels)}" data-width="{columns}" data-height="{rows}" '
        'alt="Sagittal slice: click the spinal canal at a disc to place that level" '
        'style="display:block;width:100%;max-width:none;cursor:crosshair">'
        f'<svg viewBox="0 0 {columns} {rows}" preserveAspectRatio="none" '
        'style="position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none">'
        f"{marks}</svg></div><figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def axial_html(pixels: np.ndarray, caption: str) -> str:
    return (f'<figure class="spinecad-preview"><img src="{png_data_uri(pixels)}" alt="Axial slice" '
            f'style="width:100%"><figcaption>{html.escape(caption)}</figcaption></figure>')


def _cell(values: dict | None) -> str:
    if not values:
        return "—"
    grade = values["grade"]
    return f"{grade} ({values[grade]:.2f})"


def study_table(answer: dict) -> pd.DataFrame:
    """Levels as columns; the chosen slice, its distance, then each model's and the ensemble's grade (probability)."""
    levels = answer["levels"]
    names = sorted({name for entry in levels.values() for name in (entry["models"] or {})},
                   key=lambda name: next(list(e["models"]).index(name) for e in levels.values()
                                         if e["models"] and name in e["models"]))
    rows = [
        ["Axial slice (InstanceNumber)", *[_or_dash(levels[lv]["axial_instance"]) for lv in LEVELS]],
        ["Distance to the point (mm)", *[_or_dash(levels[lv]["distance_mm"]) for lv in LEVELS]],
        ["Placed by", *[levels[lv]["placed_by"] or "not placed" for lv in LEVELS]],
        *[[name, *[_cell((levels[lv]["models"] or {}).get(name)) for lv in LEVELS]] for name in names],
        ["Ensemble (mean)", *[_cell(levels[lv]["ensemble"]) for lv in LEVELS]],
    ]
    return pd.DataFrame(rows, columns=["", *LEVELS])


def _or_dash(value) -> str:
    return "—" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def profile_figure(answer: dict) -> go.Figure:
    """P(Moderate or Severe) of the ensemble at each level's head, slice by slice down the axial stack;
    the slice each level was placed on is marked."""
    profile = answer["profile"]
    figure = go.Figure()
    if not profile:
        figure.add_annotation(text="No axial series was graded.", showarrow=False, font={"size": 18})
        return figure
    probabilities = np.asarray(profile["ensemble"])  # (slices, levels, grades)
    order = list(range(len(profile["instances"])))
    labels = [f"#{n}" for n in profile["instances"]]
    for index, level in enumerate(LEVELS):
        figure.add_trace(go.Scatter(
            x=order, y=probabilities[:, index, 1:].sum(axis=1), mode="lines+markers", name=level,
            line={"color": LEVEL_COLOURS[level], "width": 2}, customdata=labels,
            hovertemplate=f"{level} head, slice %{{customdata}}: P(Moderate or Severe) %{{y:.2f}}<extra></extra>",
        ))
        placed = answer["levels"][level]["axial_instance"]
        if placed in profile["instances"]:
            at = profile["instances"].index(placed)
            figure.add_trace(go.Scatter(
                x=[at], y=[probabilities[at, index, 1:].sum()], mode="markers+text", text=[level],
                textposition="top center", marker={"size": 16, "symbol": "star", "color": LEVEL_COLOURS[level],
                                                   "line": {"color": ENSEMBLE_COLOUR, "width": 1}},
                showlegend=False, hovertemplate=f"{level} placed on slice #{placed}<extra></extra>",
            ))
    figure.add_hline(y=0.5, line={"dash": "dot", "color": GRADE_COLOURS[SEVERITIES[1]]})
    figure.update_layout(
        template="plotly_white", font=FONT, height=420, margin={"l": 60, "r": 20, "t": 60, "b": 60},
        title="Stenosis profile along the axial stack (ensemble; ★ = slice graded for that level)",
        xaxis={"title": "axial slice, head to feet", "tickvals": order, "ticktext": labels},
        yaxis={"title": "P(Moderate or Severe)", "range": [0, 1.05]}, legend={"title": "level head"},
    )
    return figure


def level_heatmaps_html(levels: list[LevelHeatmaps], warnings: list[str]) -> str:
    """Per graded level, a heading naming its slice, then every model's heatmap on it side by side."""
    sections = [f'<section class="spinecad-level-heatmaps"><h4>{html.escape(item.level)} · axial slice '
                f"#{item.axial_instance}</h4>{heatmap_gallery_html(item.heatmaps)}</section>" for item in levels]
    notes = "".join(f'<p class="spinecad-small">{html.escape(warning)}</p>' for warning in warnings)
    if not sections:
        return f'<div class="spinecad-placeholder spinecad-small">No level is placed, so there is nothing to ' \
               f"explain.</div>{notes}"
    return "".join(sections) + notes
