"""The two tables of the evaluation artefacts (predictions.csv, history.csv): their columns, checks and ensemble.

``spinecad.evaluation.store`` reads and writes them through these functions; a bad table raises ``TableError``
naming the first bad row, which the store turns into an ``ArtefactError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import TypeAdapter, ValidationError

from spinecad.atomic import write_text_atomic
from spinecad.evaluation.artefacts import (
    HISTORY_COLUMNS,
    PREDICTION_COLUMNS,
    ArtefactError,
    HistoryRow,
    PredictionRow,
)
from spinecad.labels import LEVELS, SEVERITIES, SEVERITY_COLUMNS, row_id

# Softmax rows sum to 1 within float error; 1e-3 still catches a wrong or cut-off value.
_SUM_TOLERANCE = 1e-3


class TableError(ValueError):
    """Table content that breaks its format; the message names the first bad row."""


def canonical_predictions(frame: pd.DataFrame) -> pd.DataFrame:
    """PREDICTION_COLUMNS in order with fixed dtypes, or TableError naming the first bad row."""
    _require_columns(frame, PREDICTION_COLUMNS)
    if frame.empty:
        raise TableError("no prediction rows")
    out = pd.DataFrame({"row_id": frame["row_id"].astype(str).to_numpy()})
    study = pd.to_numeric(frame["study_id"], errors="coerce").to_numpy(dtype=float)
    _refuse_rows(out, ~np.isfinite(study) | (study != np.round(study)), "study_id is not an integer")
    out["study_id"] = study.astype(np.int64)
    for column, allowed in (("level", LEVELS), ("severity", SEVERITIES)):
        out[column] = frame[column].astype(str).to_numpy()
        _refuse_rows(out, ~out[column].isin(allowed).to_numpy(), f"{column} is not one of {', '.join(allowed)}")
    probs = np.column_stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=float)
                             for c in SEVERITY_COLUMNS])
    _refuse_rows(out, ~np.isfinite(probs).all(axis=1), "a probability is missing or not a number")
    _refuse_rows(out, (probs < 0).any(axis=1), "a probability is negative")
    _refuse_rows(out, np.abs(probs.sum(axis=1) - 1) > _SUM_TOLERANCE, "probabilities do not sum to 1")
    expected_ids = [row_id(s, lv) for s, lv in zip(out["study_id"], out["level"], strict=True)]
    _refuse_rows(out, out["row_id"].to_numpy() != np.asarray(expected_ids), "row_id does not match study_id/level")
    _refuse_rows(out, out["row_id"].duplicated().to_numpy(), "row_id appears twice")
    for k, column in enumerate(SEVERITY_COLUMNS):
        out[column] = probs[:, k]
    _declared(out, PredictionRow)
    return out


def canonical_history(frame: pd.DataFrame) -> pd.DataFrame:
    _require_columns(frame, HISTORY_COLUMNS)
    out = pd.DataFrame({"epoch": pd.to_numeric(frame["epoch"], errors="coerce").to_numpy(dtype=float)})
    epoch = out["epoch"].to_numpy()
    _refuse_rows(out, ~np.isfinite(epoch) | (epoch < 0) | (epoch != np.round(epoch)), "epoch is not an integer >= 0")
    out["epoch"] = out["epoch"].astype(np.int64)
    out["phase"] = frame["phase"].astype(str).to_numpy()
    for column in HISTORY_COLUMNS[2:]:
        # An empty cell is NaN (e.g. an epoch without validation); text is refused.
        numbers = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        _refuse_rows(out, np.isnan(numbers) & frame[column].notna().to_numpy(), f"{column} is not a number")
        out[column] = numbers
    _declared(out, HistoryRow)
    return out


def _declared(frame: pd.DataFrame, row: type[PredictionRow | HistoryRow]) -> None:
    """Every row against its declaration in ``artefacts`` (the checks above give the friendlier messages first)."""
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    try:
        TypeAdapter(list[row]).validate_python(records)
    except ValidationError as error:
        first = error.errors()[0]
        index, *field = first["loc"]
        raise TableError(f"data row {int(index) + 1}: {'.'.join(map(str, field))}: {first['msg']}") from None


def _require_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TableError(f"missing column(s) {', '.join(missing)}; expected columns {', '.join(columns)}")


def _refuse_rows(frame: pd.DataFrame, bad: np.ndarray, reason: str) -> None:
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        where = f"data row {first + 1}"
        if "row_id" in frame:
            where = f"{frame['row_id'].iloc[first]!r} ({where})"
        raise TableError(f"{reason} in {int(bad.sum())} row(s), first {where}")


def read_csv(path: Path, canonical: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    if not path.is_file():
        raise ArtefactError(path, "file is missing")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        return canonical(frame)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ArtefactError(path, f"not a readable CSV ({error})") from error
    except TableError as error:
        raise ArtefactError(path, str(error)) from error


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    # repr-precision floats, so a read gives back the very same numbers.
    write_text_atomic(path, frame.to_csv(index=False, float_format=None))


def canonical_input(frame: pd.DataFrame, canonical: Callable[[pd.DataFrame], pd.DataFrame], name: str) -> pd.DataFrame:
    try:
        return canonical(frame)
    except TableError as error:
        raise ValueError(f"{name}: {error}") from error


def mean_ensemble(predictions: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The "ensemble" predictions: per row, the mean of the models' probabilities (same rows required)."""
    frames = [canonical_input(frame, canonical_predictions, f"predictions[{i}]")
              for i, frame in enumerate(predictions)]
    if not frames:
        raise ValueError("mean_ensemble needs at least one model's predictions.")
    _, probs = aligned_probabilities({f"predictions[{i}]": frame for i, frame in enumerate(frames)})
    ensemble = frames[0].copy()
    ensemble[list(SEVERITY_COLUMNS)] = np.mean(list(probs.values()), axis=0)
    return ensemble


def aligned_probabilities(frames: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The first frame's rows (indexed by row_id) and every frame's probabilities in that row order; ValueError
    when a frame does not hold the same rows with the same true grades."""
    (first, base), *_ = ((name, frame.set_index("row_id")) for name, frame in frames.items())
    probs = {}
    for name, frame in frames.items():
        indexed = frame.set_index("row_id")
        if set(indexed.index) != set(base.index) or not indexed.loc[base.index, "severity"].equals(base["severity"]):
            raise ValueError(f"{name} does not hold the same rows and true grades as {first}.")
        probs[name] = indexed.loc[base.index, list(SEVERITY_COLUMNS)].to_numpy()
    return base, probs


