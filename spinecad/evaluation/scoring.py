"""Score a Kaggle-format predictions file (``row_id,normal_mild,moderate,severe``) against RSNA 2024 labels.

Only spinal canal stenosis rows are scored; rows of the other RSNA conditions are skipped and counted. Each
row's probabilities are renormalised to sum 1, as Kaggle's competition metric does, so unnormalised scores
are accepted; a row with a missing, non-numeric, infinite or negative value, or only zeros, cannot be
renormalised and is left out, counted and named in ``invalid_rows`` (``strict=True`` refuses the file instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spinecad.evaluation.bootstrap import bootstrap_intervals
from spinecad.evaluation.metrics import Metrics, compute_metrics
from spinecad.labels import CONDITION, LEVEL_KEYS, LEVELS, SEVERITIES, SEVERITY_COLUMNS, row_id

LABEL_COLUMNS: tuple[str, ...] = ("row_id", "study_id", "level", "severity")
SUBMISSION_COLUMNS: tuple[str, ...] = ("row_id", *SEVERITY_COLUMNS)
# Kaggle row ids: <study>_<condition>_<level>, e.g. 4003253_left_neural_foraminal_narrowing_l5_s1.
_ROW_ID = re.compile(rf"\d+_(?P<condition>[a-z_]+)_(?P<level>{'|'.join(LEVEL_KEYS)})")
# Rows named in a result; the count is always complete.
_MAX_LISTED_ROWS = 20


class ScoringError(ValueError):
    """A predictions or labels file that cannot be scored; the message says why and what would work."""


class ScoreResult(Metrics):
    """compute_metrics of the scored rows plus what happened to the rest of the file (JSON-able)."""

    n_prediction_rows: int
    n_unlabelled_predictions: int
    n_unpredicted_labels: int
    n_other_condition_rows: int
    n_invalid_rows: int
    invalid_rows: list[dict[str, str]]
    intervals: dict | None


def load_canal_labels(train_csv: str | Path) -> pd.DataFrame:
    """Canal grades of an RSNA train.csv as rows (row_id, study_id, level, severity), study by study.

    Empty grades are dropped; their count is in ``attrs["n_unlabelled"]``.
    """
    path = Path(train_csv)
    grade_columns = [f"{CONDITION}_{key}" for key in LEVEL_KEYS]
    table = _read_text_csv(path, f"labels file {path}")
    _require_columns(table, ("study_id", *grade_columns), f"labels file {path}", " as in an RSNA 2024 train.csv")
    study = pd.to_numeric(table["study_id"], errors="coerce")
    if study.isna().any():
        raise ScoringError(f"labels file {path}: study_id {table['study_id'][study.isna()].iloc[0]!r} "
                           "is not a number.")
    long = pd.DataFrame({
        "study_id": np.repeat(study.to_numpy(dtype=np.int64), len(LEVELS)),
        "level": np.tile(LEVELS, len(table)),
        "severity": table[grade_columns].to_numpy(dtype=object).ravel(),
    })
    unlabelled = long["severity"].isna()
    unknown = ~unlabelled & ~long["severity"].isin(SEVERITIES)
    if unknown.any():
        first = long[unknown].iloc[0]
        raise ScoringError(f"labels file {path}: study {first['study_id']} at {first['level']} is graded "
                           f"{first['severity']!r}; expected one of {', '.join(SEVERITIES)} or empty.")
    labels = long[~unlabelled].reset_index(drop=True)
    labels.insert(0, "row_id", [row_id(s, lv) for s, lv in zip(labels["study_id"], labels["level"], strict=True)])
    labels["severity"] = labels["severity"].astype(str)
    labels.attrs["n_unlabelled"] = int(unlabelled.sum())
    return labels


def _read_text_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise ScoringError(f"{what} not found.")
    try:
        # As text, so a non-numeric cell is reported by row rather than failing the whole read.
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ScoringError(f"{what} is not a readable CSV ({error}).") from error


@dataclass(frozen=True)
class MatchedPredictions:
    """The scorable rows of a predictions file joined to their labels, and what happened to the others."""

    predictions: pd.DataFrame  # evaluation.PREDICTION_COLUMNS; probabilities renormalised per row
    n_prediction_rows: int
    n_unlabelled_predictions: int
    n_unpredicted_labels: int  # labelled rows without a usable (present and valid) prediction
    n_other_condition_rows: int
    invalid_rows: list[dict[str, str]]  # every invalid row: {"row_id", "reason"}


def match_predictions(predictions: str | Path | pd.DataFrame, labels_df: pd.DataFrame,
                      strict: bool = False) -> MatchedPredictions:
    """Join the valid canal rows of a Kaggle-format predictions file to ``load_canal_labels`` rows.

    The joined frame has the evaluation predictions.csv columns, so the app can chart an outside model
    with the same functions as its own models.
    """
    if isinstance(predictions, pd.DataFrame):
        source, frame = "predictions", predictions.reset_index(drop=True)
    else:
        source = f"predictions file {Path(predictions)}"
        frame = _read_text_csv(Path(predictions), source)
    _require_columns(frame, SUBMISSION_COLUMNS, source, " as in a Kaggle submission")
    _check_labels(labels_df)
    row_ids = frame["row_id"].astype(str).str.strip()
    parsed = row_ids.str.fullmatch(_ROW_ID.pattern).to_numpy()
    is_canal = parsed & (row_ids.str.extract(_ROW_ID.pattern)["condition"] == CONDITION).to_numpy()
    reasons = _invalid_probability_reasons(frame)
    reasons[~parsed] = "row_id is not <study_id>_<condition>_<level> (e.g. 4003253_spinal_canal_stenosis_l1_l2)"
    reasons[parsed & ~is_canal] = ""  # other conditions are skipped, not judged
    invalid = reasons != ""
    invalid_rows = [{"row_id": row_ids[i], "reason": f"data row {i + 1}: {reasons[i]}"}
                    for i in np.flatnonzero(invalid)]
    if strict and invalid_rows:
        first = invalid_rows[0]
        raise ScoringError(f"{source}: row {first['row_id']!r}, {first['reason']} ({len(invalid_rows)} such rows).")
    scorable = is_canal & ~invalid
    duplicated = row_ids[scorable].duplicated()
    if duplicated.any():
        raise ScoringError(f"{source}: row_id {row_ids[scorable][duplicated].iloc[0]!r} appears more than once; "
                           "each row_id must have exactly one prediction.")
    probs = frame.loc[scorable, list(SEVERITY_COLUMNS)].apply(pd.to_numeric).to_numpy(dtype=float)
    predicted = pd.DataFrame(probs / probs.sum(axis=1, keepdims=True), columns=list(SEVERITY_COLUMNS))
    predicted.insert(0, "row_id", row_ids[scorable].to_numpy())
    matched = labels_df[list(LABEL_COLUMNS)].merge(predicted, on="row_id", how="inner")
    if matched.empty:
        example = row_id(labels_df["study_id"].iloc[0] if len(labels_df) else 4003253, LEVELS[0])
        raise ScoringError(f"{source}: no valid prediction matches a labelled {CONDITION} row; "
                           f"row ids look like {example}.")
    return MatchedPredictions(
        predictions=matched,
        n_prediction_rows=len(frame),
        n_unlabelled_predictions=int(scorable.sum()) - len(matched),
        n_unpredicted_labels=len(labels_df) - len(matched),
        n_other_condition_rows=int((parsed & ~is_canal).sum()),
        invalid_rows=invalid_rows,
    )


def score_predictions(predictions: str | Path | pd.DataFrame, labels_df: pd.DataFrame, n_boot: int = 0,
                      seed: int = 0, strict: bool = False) -> ScoreResult:
    """Table 2 metrics of a Kaggle-format predictions file on the labelled canal rows it predicts.

    ``n_boot`` > 0 adds patient-level bootstrap intervals; ``strict`` refuses a file with any invalid row.
    """
    matched = match_predictions(predictions, labels_df, strict=strict)
    y_true = matched.predictions["severity"].map(SEVERITIES.index).to_numpy()
    probs = matched.predictions[list(SEVERITY_COLUMNS)].to_numpy()
    result = compute_metrics(y_true, probs, matched.predictions["study_id"].to_numpy())
    result["notes"].append("Probabilities were renormalised to sum 1 per row, as Kaggle's competition metric does.")
    invalid_rows = matched.invalid_rows
    if len(invalid_rows) > _MAX_LISTED_ROWS:
        result["notes"].append(f"Only the first {_MAX_LISTED_ROWS} of {len(invalid_rows)} invalid rows are listed.")
    intervals = None
    if n_boot > 0:
        intervals = bootstrap_intervals(matched.predictions["study_id"].to_numpy(), y_true, probs, n_boot, seed)
    return ScoreResult(
        **result,
        n_prediction_rows=matched.n_prediction_rows,
        n_unlabelled_predictions=matched.n_unlabelled_predictions,
        n_unpredicted_labels=matched.n_unpredicted_labels,
        n_other_condition_rows=matched.n_other_condition_rows,
        n_invalid_rows=len(invalid_rows),
        invalid_rows=invalid_rows[:_MAX_LISTED_ROWS],
        intervals=intervals,
    )


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str, hint: str = "") -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ScoringError(f"{what} lacks column(s) {', '.join(missing)}; expected columns {','.join(columns)}{hint}.")


def _check_labels(labels_df: pd.DataFrame) -> None:
    _require_columns(labels_df, LABEL_COLUMNS, "labels_df", " (see load_canal_labels)")
    unknown = ~labels_df["severity"].isin(SEVERITIES)
    if unknown.any():
        raise ScoringError(f"labels_df: row {labels_df['row_id'][unknown].iloc[0]!r} has grade "
                           f"{labels_df['severity'][unknown].iloc[0]!r}; expected one of {', '.join(SEVERITIES)}.")
    if labels_df["row_id"].duplicated().any():
        raise ScoringError(f"labels_df: row_id {labels_df['row_id'][labels_df['row_id'].duplicated()].iloc[0]!r} "
                           "appears more than once.")


def _invalid_probability_reasons(frame: pd.DataFrame) -> np.ndarray:
    """Per row, why its probabilities cannot be renormalised ("" when they can)."""
    reasons = np.full(len(frame), "", dtype=object)
    values = np.column_stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=float) for c in SEVERITY_COLUMNS])
    checks = (
        (~np.isfinite(values).all(axis=1), "a probability is missing, not a number or infinite"),
        ((values < 0).any(axis=1), "a probability is negative"),
        (np.nan_to_num(values).sum(axis=1) == 0, "all probabilities are 0, so the row cannot be renormalised"),
    )
    for bad, reason in checks:
        reasons[bad & (reasons == "")] = reason
    return reasons
