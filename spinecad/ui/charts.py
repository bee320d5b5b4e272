"""Plotly figures of predictions and evaluation artefacts, drawn for a lecture hall: large text, few colours.

Grades keep one colour everywhere (Okabe-Ito, readable with colour-vision deficiency); models keep one colour in
every chart of the Compare tab; the ensemble is always black.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from spinecad.evaluation.artefacts import Confusion
from spinecad.evaluation.comparison import ColumnResults, DifferenceMatrix
from spinecad.inference.predictor import ENSEMBLE, Prediction
from spinecad.labels import LEVELS, SEVERITIES, level_index

GRADE_COLOURS: dict[str, str] = {"Normal/Mild": "#009E73", "Moderate": "#E69F00", "Severe": "#D55E00"}
MODEL_PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C6D31",
                                  "#7F7F7F")
ENSEMBLE_COLOUR = "#000000"
FONT = {"size": 15}
_LAYOUT = {"template": "plotly_white", "font": FONT, "hoverlabel": {"font_size": 14}}


def model_colours(names: Sequence[str]) -> dict[str, str]:
    """A fixed colour per model name, in order; the ensemble is black."""
    colours, others = {}, iter(MODEL_PALETTE * (1 + len(names) // len(MODEL_PALETTE)))
    for name in names:
        colours[name] = ENSEMBLE_COLOUR if _is_ensemble(name) else next(others)
    return colours


def message_figure(message: str) -> go.Figure:
    """An empty chart that says why there is nothing to draw."""
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, font={"size": 16}, x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_layout(**_LAYOUT, height=240, xaxis={"visible": False}, yaxis={"visible": False})
    return figure


# ---- Predict tab --------------------------------------------------------------------------------------------

def probability_figure(prediction: Prediction, level: str) -> go.Figure:
    """Stacked bars: each model's (and the ensemble's) three probabilities at ``level``."""
    index = level_index(level)
    names = [o.name for o in prediction.outputs] + [ENSEMBLE]
    probs = np.vstack([o.probs[index] for o in prediction.outputs] + [prediction.ensemble[index]])
    figure = go.Figure()
    for k, grade in enumerate(SEVERITIES):
        share = 100 * probs[:, k]
        figure.add_bar(
            y=names, x=share, name=grade, orientation="h", marker_color=GRADE_COLOURS[grade],
            text=[f"{p:.0f}%" if p >= 8 else "" for p in share], textposition="inside", insidetextanchor="middle",
            hovertemplate=f"%{{y}}<br>{grade}: %{{x:.1f}}%<extra></extra>",
        )
    figure.update_layout(
        **_LAYOUT, barmode="stack", height=120 + 40 * len(names), margin={"l": 10, "r": 10, "t": 60, "b": 40},
        title={"text": f"How likely each grade is at {LEVELS[index]}", "x": 0},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right", "title": None,
                "traceorder": "normal"},
        xaxis={"title": "probability (%)", "range": [0, 100]},
        yaxis={"autorange": "reversed", "tickfont": {"size": 15}},
    )
    return figure


def grade_grid_figure(prediction: Prediction, level: str | None = None) -> go.Figure:
    """Models x levels grid of the predicted grade, coloured by grade; the selected level is outlined."""
    names = [o.name for o in prediction.outputs] + [ENSEMBLE]
    grades = np.array([[int(np.argmax(row)) for row in o.probs] for o in prediction.outputs]
                      + [[int(np.argmax(row)) for row in prediction.ensemble]])
    # A three-step colour scale: each grade id maps to its own flat band.
    scale = []
    for k, grade in enumerate(SEVERITIES):
        scale += [[k / len(SEVERITIES), GRADE_COLOURS[grade]], [(k + 1) / len(SEVERITIES), GRADE_COLOURS[grade]]]
    figure = go.Figure(go.Heatmap(
        z=grades, x=list(prediction.level_names), y=names, zmin=-0.5, zmax=len(SEVERITIES) - 0.5,
        colorscale=scale, showscale=False, xgap=3, ygap=3,
        text=[[SEVERITIES[g] for g in row] for row in grades], texttemplate="%{text}", textfont={"size": 14},
        hovertemplate="%{y} at %{x}: %{text}<extra></extra>",
    ))
    if level is not None:
        column = level_index(level)
        figure.add_shape(type="rect", x0=column - 0.5, x1=column + 0.5, y0=-0.5, y1=len(names) - 0.5,
                         line={"color": "#111111", "width": 3})
    figure.update_layout(
        **_LAYOUT, height=110 + 40 * len(names), margin={"l": 10, "r": 10, "t": 60, "b": 20},
        title={"text": "Predicted grade at every level (one backbone pass per model)", "x": 0},
        xaxis={"side": "top", "title": None}, yaxis={"autorange": "reversed"},
    )
    return figure


# ---- Compare tab --------------------------------------------------------------------------------------------

def roc_figure(columns: Sequence[ColumnResults]) -> go.Figure:
    """One-vs-rest ROC curves, one panel per grade, every model overlaid."""
    figure = _per_grade_panels(columns, "roc", "fpr", "tpr", "roc_auc", "ROC-AUC")
    for k in range(len(SEVERITIES)):
        figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#999999"},
                                    name="chance", showlegend=k == 0, hoverinfo="skip"), row=1, col=k + 1)
    figure.update_xaxes(title="false positive rate", range=[0, 1])
    figure.update_yaxes(title="true positive rate", range=[0, 1.02], col=1)
    return figure


def pr_figure(columns: Sequence[ColumnResults]) -> go.Figure:
    """One-vs-rest precision-recall curves, one panel per grade, with the grade's prevalence as the chance line."""
    figure = _per_grade_panels(columns, "pr", "recall", "precision", "pr_auc", "PR-AUC")
    for k, grade in enumerate(SEVERITIES):
        prevalences = [c.curves[grade].prevalence for c in columns if grade in c.curves]
        if prevalences:
            figure.add_trace(go.Scatter(x=[0, 1], y=[prevalences[0]] * 2, mode="lines", name="chance (prevalence)",
                                        line={"dash": "dot", "color": "#999999"}, showlegend=k == 0,
                                        hoverinfo="skip"), row=1, col=k + 1)
    figure.update_xaxes(title="recall", range=[0, 1])
    figure.update_yaxes(title="precision", range=[0, 1.02], col=1)
    return figure


def _per_grade_panels(columns: Sequence[ColumnResults], curve: str, x_key: str, y_key: str, auc_key: str,
                      auc_label: str) -> go.Figure:
    figure = make_subplots(rows=1, cols=len(SEVERITIES), subplot_titles=list(SEVERITIES), shared_yaxes=True,
                           horizontal_spacing=0.04)
    colours = model_colours([c.name for c in columns])
    for k, grade in enumerate(SEVERITIES):
        for column in columns:
            points = getattr(column.curves[grade], curve) if grade in column.curves else None
            if points is None:
                continue
            auc = column.metrics.value(auc_key, grade)
            auc_text = "undefined" if auc is None else f"{auc:.3f}"
            figure.add_trace(go.Scatter(
                x=getattr(points, x_key), y=getattr(points, y_key), mode="lines", name=column.name,
                legendgroup=column.name,
                showlegend=k == 0, line={"color": colours[column.name], "width": 3 if _is_ensemble(column.name) else 2,
                                         "shape": "hv" if curve == "pr" else "linear"},
                hovertemplate=f"{column.name}<br>{grade} {auc_label} {auc_text}<extra></extra>",
            ), row=1, col=k + 1)
    figure.update_layout(**_LAYOUT, height=430, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                         legend={"orientation": "h", "y": -0.22, "x": 0, "title": None})
    return figure


def confusion_figure(confusion: Confusion, title: str) -> go.Figure:
    """Confusion matrix as counts and as row-normalised shares (rows: true grade, columns: predicted grade)."""
    labels = list(confusion.labels)
    counts = np.asarray(confusion.counts).astype(int)
    shares = np.asarray(confusion.row_normalised)
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.14,
                           subplot_titles=["counts", "share of each true grade (rows sum to 100%)"])
    figure.add_trace(go.Heatmap(z=counts, x=labels, y=labels, colorscale="Blues", showscale=False,
                                text=counts, texttemplate="%{text}", textfont={"size": 16},
                                hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"), row=1, col=1)
    figure.add_trace(go.Heatmap(z=shares, x=labels, y=labels, colorscale="Blues", showscale=False, zmin=0, zmax=1,
                                text=[[f"{100 * v:.0f}%" for v in row] for row in shares], texttemplate="%{text}",
                                textfont={"size": 16},
                                hovertemplate="true %{y}, predicted %{x}: %{z:.1%}<extra></extra>"), row=1, col=2)
    figure.update_xaxes(title="predicted grade")
    figure.update_yaxes(title="true grade", autorange="reversed", col=1)
    figure.update_yaxes(autorange="reversed", col=2)
    figure.update_layout(**_LAYOUT, height=400, margin={"l": 10, "r": 10, "t": 80, "b": 10},
                         title={"text": title, "x": 0})
    return figure


def history_figure(histories: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Training curves: loss and macro-F1 per epoch, validation solid and training dotted, one colour per model."""
    if not histories:
        return message_figure("No training history in the evaluation artefacts.")
    figure = make_subplots(rows=1, cols=2, subplot_titles=["loss (lower is better)", "macro F1 (higher is better)"],
                           horizontal_spacing=0.08)
    colours = model_colours(list(histories))
    for name, history in histories.items():
        epoch = history["epoch"]  # as the training package numbers them (from 1)
        for col, metric in ((1, "loss"), (2, "macro_f1")):
            for split, dash in (("val", "solid"), ("train", "dot")):
                values = history[f"{split}_{metric}"]
                if values.notna().any():
                    figure.add_trace(go.Scatter(
                        x=epoch, y=values, mode="lines+markers", name=name, legendgroup=name,
                        showlegend=col == 1 and split == "val", line={"color": colours[name], "dash": dash},
                        marker={"size": 5}, hovertemplate=f"{name} {split} epoch %{{x}}: %{{y:.3f}}<extra></extra>",
                    ), row=1, col=col)
    last_epoch = max(int(history["epoch"].max()) for history in histories.values())
    # Whole epochs only, and at most ~10 labels however long the run.
    figure.update_xaxes(title="epoch", tickmode="linear", tick0=1, dtick=max(1, -(-last_epoch // 10)))
    figure.update_layout(**_LAYOUT, height=420, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                         legend={"orientation": "h", "y": -0.25, "x": 0, "title": None})
    return figure


def reliability_figure(columns: Sequence[ColumnResults], per_row: int = 4) -> go.Figure:
    """Reliability diagram per model: confidence against share right, raw (grey) and temperature-scaled (colour).

    Marker area grows with the number of levels in a bin, so the eye discounts sparse bins.
    """
    shown = [c for c in columns if c.reliability]
    if not shown:
        return message_figure("No reliability curves in the evaluation artefacts.")
    rows = -(-len(shown) // per_row)
    figure = make_subplots(rows=rows, cols=per_row, shared_xaxes=True, shared_yaxes=True, vertical_spacing=0.16,
                           horizontal_spacing=0.03, subplot_titles=[_reliability_title(c) for c in shown])
    colours = model_colours([c.name for c in columns])
    largest = max(max(c.reliability.count, default=1) for c in shown)
    for k, column in enumerate(shown):
        row, col = k // per_row + 1, k % per_row + 1
        figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#999999"},
                                    name="perfectly calibrated", showlegend=k == 0, hoverinfo="skip"), row=row, col=col)
        for curve, label, colour in ((column.reliability, "raw (grey)", "#9a9a9a"),
                                     (column.reliability_calibrated, "temperature-scaled (colour)",
                                      colours[column.name])):
            if curve is None:
                continue
            figure.add_trace(go.Scatter(
                x=curve.mean_predicted, y=curve.observed, mode="lines+markers", name=label,
                legendgroup=label, showlegend=k == 0,
                customdata=curve.count, line={"color": colour, "width": 2},
                marker={"size": [5 + 11 * (n / largest) ** 0.5 for n in curve.count], "color": colour},
                hovertemplate=(f"{column.name}, {label}<br>confidence %{{x:.2f}}: right %{{y:.0%}} of "
                               "%{customdata} levels<extra></extra>"),
            ), row=row, col=col)
    figure.update_xaxes(range=[0, 1.02], dtick=0.5)
    figure.update_yaxes(range=[0, 1.05], dtick=0.5)
    figure.update_xaxes(title="confidence", row=rows)
    figure.update_yaxes(title="share right", col=1)
    figure.update_annotations(font_size=14)
    figure.update_layout(**_LAYOUT, height=120 + 260 * rows, margin={"l": 10, "r": 10, "t": 100, "b": 10},
                         legend={"orientation": "h", "y": 1.1, "yanchor": "bottom", "x": 0, "xanchor": "left",
                                 "title": None})
    return figure


def _reliability_title(column: ColumnResults) -> str:
    calibration = column.calibration
    if calibration is None:
        return column.name
    if calibration.calibrated is None:
        return f"{column.name}<br>ECE {calibration.ece:.3f}"
    return f"{column.name}<br>ECE {calibration.ece:.3f} → {calibration.calibrated.ece:.3f}"


SIGNIFICANCE_TITLES = {"macro_f1": "macro F1", "macro_roc_auc": "macro ROC-AUC"}


def significance_figure(matrices: Sequence[DifferenceMatrix], split_name: str = "test") -> go.Figure:
    """Per metric, row model minus column model (each pair once), its 95% interval, ★ where it excludes 0."""
    if not matrices or len(matrices[0].names) < 2:
        return message_figure("No significance results to show.")
    figure = make_subplots(rows=len(matrices), cols=1, vertical_spacing=0.1,
                           subplot_titles=[f"{SIGNIFICANCE_TITLES.get(m.metric, m.metric)}: row model − column model"
                                           for m in matrices])
    finite = [np.abs(m.difference[np.isfinite(m.difference)]) for m in matrices]
    limit = max(0.05, *(float(values.max()) for values in finite if values.size))
    for k, matrix in enumerate(matrices):
        # Each pair once: row i against every earlier model j (the other half is the same numbers negated).
        lower = np.tril(np.ones_like(matrix.difference, dtype=bool), k=-1)
        z = np.where(lower, matrix.difference, np.nan)[1:, :-1]
        text = [[_difference_cell(matrix, i, j) if lower[i, j] else "" for j in range(len(matrix.names) - 1)]
                for i in range(1, len(matrix.names))]
        figure.add_trace(go.Heatmap(
            z=z, x=matrix.names[:-1], y=matrix.names[1:], zmin=-limit, zmax=limit, colorscale="RdBu",
            showscale=k == 0, colorbar={"title": "row − column", "len": 0.5, "y": 1, "yanchor": "top"},
            text=text, texttemplate="%{text}", textfont={"size": 13}, xgap=3, ygap=3, hoverongaps=False,
            customdata=np.dstack([matrix.low, matrix.high])[1:, :-1],
            hovertemplate=("%{y} − %{x}: %{z:+.3f}<br>95% interval [%{customdata[0]:+.3f}, "
                           "%{customdata[1]:+.3f}]<extra></extra>"),
        ), row=k + 1, col=1)
    figure.update_yaxes(autorange="reversed")
    figure.update_xaxes(showgrid=False)
    figure.update_yaxes(showgrid=False)
    size = len(matrices[0].names) - 1
    figure.update_layout(**_LAYOUT, height=120 + len(matrices) * (70 + 58 * size),
                         margin={"l": 10, "r": 10, "t": 80, "b": 10}, plot_bgcolor="#ffffff",
                         title={"text": f"Is the row model better than the column model? ({split_name} split; "
                                        "★ = 95% interval excludes 0)", "x": 0.01})
    return figure


def _difference_cell(matrix: DifferenceMatrix, i: int, j: int) -> str:
    if not np.isfinite(matrix.difference[i, j]):
        return "n/a"
    star = " ★" if matrix.excludes_zero[i, j] else ""
    return f"<b>{matrix.difference[i, j]:+.3f}{star}</b><br>[{matrix.low[i, j]:+.3f}, {matrix.high[i, j]:+.3f}]"


def _is_ensemble(name: str) -> bool:
    return name == ENSEMBLE or name.lower().startswith("ensemble")
