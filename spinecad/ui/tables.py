"""The tables the app shows: the paper's Table 2 with intervals and calibration, and one slice's model table."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from spinecad.evaluation.artefacts import Interval
from spinecad.evaluation.comparison import ColumnResults
from spinecad.evaluation.paper import PAPER_MODELS, PAPER_TABLE_2
from spinecad.inference.predictor import ENSEMBLE
from spinecad.labels import SEVERITIES
from spinecad.models.registry import PAPER_PROFILE

TABLE_ROWS: tuple[tuple[str, str], ...] = (
    ("Accuracy", "accuracy"), ("Macro F1", "macro_f1"), ("Weighted F1", "weighted_f1"),
    ("Macro ROC-AUC", "macro_roc_auc"), ("Macro PR-AUC", "macro_pr_auc"),
)
TABLE_CLASS_ROWS: tuple[tuple[str, str], ...] = (
    ("Precision", "precision"), ("Recall", "recall"), ("F1-Score", "f1"), ("ROC-AUC", "roc_auc"), ("PR-AUC", "pr_auc"),
)
RSNA_GROUP = "RSNA 2024 metric (lower is better)"
CALIBRATION_ROWS: tuple[str, ...] = ("ECE, raw", "ECE, calibrated", "Log loss, raw", "Log loss, calibrated",
                                     "Temperature")
TABLE_RSNA_ROWS: tuple[tuple[str, str], ...] = (
    ("Canal log loss (weights 1/2/4)", "rsna_canal_log_loss"), ("Any-severe log loss", "rsna_any_severe_log_loss"),
    ("Canal score (their mean)", "rsna_canal_score"),
)


def metrics_table(columns: Sequence[ColumnResults], digits: int = 3) -> pd.DataFrame:
    """Table 2 for the columns: rows "Overall" then each grade then "Calibration", "estimate [low, high]" cells."""
    rows = [("Overall", label, None, name) for label, name in TABLE_ROWS]
    rows += [(grade, label, grade, name) for grade in SEVERITIES for label, name in TABLE_CLASS_ROWS]
    rows += [(RSNA_GROUP, label, None, name) for label, name in TABLE_RSNA_ROWS]
    table = {}
    for column in columns:
        cells = []
        for _, _, grade, name in rows:
            interval = column.intervals.interval(name, grade) if column.intervals else None
            cells.append(_with_interval(column.metrics.value(name, grade), interval, digits))
        table[column.name] = cells + _calibration_cells(column, digits)
    labels = [(group, label) for group, label, _, _ in rows]
    labels += [("Calibration", label) for label in CALIBRATION_ROWS]
    frame = pd.DataFrame(table, index=pd.MultiIndex.from_tuples(labels, names=["Group", "Metric"])).reset_index()
    # The group name once per block reads like the paper's table.
    frame.loc[frame["Group"].duplicated(), "Group"] = ""
    return frame


def paper_table() -> pd.DataFrame:
    """The paper's reported Table 2 (its own test split), one column per paper model in the registry's order, named
    like ours with "(paper)", the paper's best value per row in bold as it prints it."""
    by_family = {family: index for index, family in enumerate(PAPER_MODELS.values())}
    shown = [spec for spec in PAPER_PROFILE if spec.name in by_family]
    frame = pd.DataFrame(
        {f"{spec.display_name} (paper)": [values[by_family[spec.name]] for values in PAPER_TABLE_2.values()]
         for spec in shown},
        index=pd.MultiIndex.from_tuples(list(PAPER_TABLE_2), names=["Group", "Metric"]))
    best = frame.max(axis=1)
    cells = frame.apply(lambda column: [f"**{v:.3f}**" if v == top else f"{v:.3f}"
                                        for v, top in zip(column, best, strict=True)])
    cells = cells.reset_index()
    cells.loc[cells["Group"].duplicated(), "Group"] = ""
    return cells


def two_line_cells(table: pd.DataFrame) -> pd.DataFrame:
    """"0.872 [0.851, 0.890]" -> the estimate over its smaller interval: narrow columns a room can read."""

    def split(cell: object) -> object:
        if not isinstance(cell, str) or " [" not in cell:
            return cell
        estimate, interval = cell.split(" [", 1)
        return f"{estimate}<br><small>{interval.rstrip(']').replace(', ', '–')}</small>"

    return table.map(split)


def probability_table(result: dict) -> pd.DataFrame:
    """One row per model and one for the ensemble: the three probabilities (%), grade, time taken, device."""
    rows = []
    for name, values in [*result["models"].items(), (ENSEMBLE, result["ensemble"])]:
        rows.append({
            "Model": name,
            **{grade: f"{100 * values[grade]:.1f}%" for grade in SEVERITIES},
            "Grade": values["grade"],
            "Time (ms)": f"{values['latency_ms']:.1f}" if "latency_ms" in values else "",
            "Device": result["device"] if name != ENSEMBLE else "",
        })
    return pd.DataFrame(rows)


def _calibration_cells(column: ColumnResults, digits: int) -> list[str]:
    """CALIBRATION_ROWS: ECE and log loss before and after temperature scaling, and the temperature."""
    calibration = column.calibration
    calibrated = calibration.calibrated if calibration else None
    if calibrated is None:
        temperature = "n/a"
    elif calibrated.temperature is None:
        temperature = "per model"
    else:
        temperature = _number(calibrated.temperature, 2)
        if calibrated.base_ece is not None:  # an ensemble: its own temperature over its models' calibrated mean
            temperature = f"per model, then {temperature}"
    return [_number(calibration.ece if calibration else None, digits),
            _number(calibrated.ece if calibrated else None, digits),
            _number(calibration.log_loss if calibration else None, digits),
            _number(calibrated.log_loss if calibrated else None, digits), temperature]


def _with_interval(estimate: float | None, interval: Interval | None, digits: int) -> str:
    if estimate is None:
        return "n/a"
    if interval is None or interval.low is None or interval.high is None:
        return f"{estimate:.{digits}f}"
    return f"{estimate:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
