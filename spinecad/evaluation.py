"""The evaluation-artefact format: written by the training package, read by the app, defined here only.

Layout under an evaluation root (schema version ``SCHEMA_VERSION``)::

    summary.json                      EvaluationSummary: schema_version, created_at (ISO 8601, UTC), demo
                                      (true = synthetic phantom data), description, splits, models [{key,
                                      display_name}] in column order, "ensemble" (mean of the models) last
    <model_key>/history.csv           optional, one row per epoch: HISTORY_COLUMNS
    <model_key>/<split>/predictions.csv   one row per (study, level): PREDICTION_COLUMNS; severity is the
                                      true grade, normal_mild/moderate/severe the predicted probabilities
    <model_key>/<split>/metrics.json  METRICS_SCHEMA: compute_metrics, bootstrap_intervals, confusion
                                      matrices and top-label ECE of the predictions (and, optionally, of the
                                      calibrated probabilities: method, temperature, ECE)
    <model_key>/<split>/curves.json   CURVES_SCHEMA: ROC/PR points per grade and the reliability curve (and,
                                      optionally, the calibrated probabilities' reliability curve)
    significance.json                 optional, SIGNIFICANCE_SCHEMA: paired patient-level bootstrap differences
                                      in macro-F1 and macro ROC-AUC between every two models (ensemble included)
                                      on one split, from the predictions.csv files

Predictions, metrics and curves are of the raw (uncalibrated) probabilities; calibration is reported beside them.

Every file is written atomically (``spinecad.atomic``) and every reader validates what it reads against the
schemas below, raising ``ArtefactError`` naming the file; ``validate_tree`` checks a whole root.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from spinecad import metrics
from spinecad.atomic import write_text_atomic
from spinecad.labels import LEVELS, SEVERITIES, SEVERITY_COLUMNS, row_id

SCHEMA_VERSION = 1
SPLITS: tuple[str, ...] = ("val", "test")
KNOWN_SPLITS: tuple[str, ...] = ("train", "val", "test")
ENSEMBLE_KEY = "ensemble"
PREDICTION_COLUMNS: tuple[str, ...] = ("row_id", "study_id", "level", "severity", *SEVERITY_COLUMNS)
HISTORY_COLUMNS: tuple[str, ...] = (
    "epoch", "phase", "train_loss", "train_accuracy", "train_macro_f1",
    "val_loss", "val_accuracy", "val_macro_f1", "lr", "seconds",
)
# Softmax rows sum to 1 within float error; 1e-3 still catches a wrong or cut-off value.
_SUM_TOLERANCE = 1e-3
_KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")


class ArtefactError(Exception):
    """An evaluation artefact is missing, truncated or does not match its schema."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


@dataclass(frozen=True)
class ModelEntry:
    """One column of the evaluation: a folder key and the name shown to people."""

    key: str
    display_name: str


@dataclass(frozen=True)
class EvaluationSummary:
    """Contents of summary.json."""

    schema_version: int
    created_at: str
    demo: bool
    description: str
    splits: tuple[str, ...]
    models: tuple[ModelEntry, ...]


# ---- Schemas of the JSON files: a dict lists required keys (extra keys are allowed) -------------------------

class _Nullable:
    def __init__(self, spec: object) -> None:
        self.spec = spec


class _ListOf:
    def __init__(self, item: object, length: int | None = None) -> None:
        self.item, self.length = item, length


class _Optional:
    """A key that files written before it existed lack; when present it must match ``spec``."""

    def __init__(self, spec: object) -> None:
        self.spec = spec


NUMBER, INTEGER, STRING, BOOLEAN = "number", "integer", "string", "boolean"
_INTERVAL = {"estimate": _Nullable(NUMBER), "low": _Nullable(NUMBER), "high": _Nullable(NUMBER),
             "n_valid": INTEGER}
_GRADE_COUNTS = {grade: INTEGER for grade in SEVERITIES}
_MATRIX = _ListOf(_ListOf(NUMBER, len(SEVERITIES)), len(SEVERITIES))
_HEADER = {"schema_version": INTEGER, "model_key": STRING, "split": STRING}
METRICS_SCHEMA = {
    **_HEADER,
    "metrics": {
        "n": INTEGER, "class_counts": _GRADE_COUNTS, "predicted_counts": _GRADE_COUNTS,
        **{name: _Nullable(NUMBER) for name in metrics.OVERALL_METRICS},
        "per_class": {grade: {name: _Nullable(NUMBER) for name in metrics.CLASS_METRICS} for grade in SEVERITIES},
        "notes": _ListOf(STRING),
    },
    "intervals": {
        "method": STRING, "n_boot": INTEGER, "seed": INTEGER, "alpha": NUMBER, "n_studies": INTEGER,
        "overall": {name: _INTERVAL for name in metrics.OVERALL_METRICS},
        "per_class": {grade: {name: _INTERVAL for name in metrics.CLASS_METRICS} for grade in SEVERITIES},
    },
    "confusion": {"labels": _ListOf(STRING, len(SEVERITIES)), "counts": _MATRIX, "row_normalised": _MATRIX},
    "calibration": {"ece": NUMBER, "n_bins": INTEGER,
                    # temperature is null for the ensemble (the mean of its models' calibrated probabilities)
                    "calibrated": _Optional({"method": STRING, "temperature": _Nullable(NUMBER), "ece": NUMBER})},
}
_NUMBERS = _ListOf(NUMBER)
_RELIABILITY = {"kind": STRING, "n_bins": INTEGER, "bin_edges": _NUMBERS, "mean_predicted": _NUMBERS,
                "observed": _NUMBERS, "count": _ListOf(INTEGER)}
CURVES_SCHEMA = {
    **_HEADER,
    "roc_pr": {grade: {"prevalence": NUMBER,
                       "roc": _Nullable({"fpr": _NUMBERS, "tpr": _NUMBERS, "thresholds": _ListOf(_Nullable(NUMBER))}),
                       "pr": _Nullable({"recall": _NUMBERS, "precision": _NUMBERS})}
               for grade in SEVERITIES},
    "reliability": _RELIABILITY,
    "reliability_calibrated": _Optional(_RELIABILITY),
}
SIGNIFICANCE_METRICS: tuple[str, ...] = ("macro_f1", "macro_roc_auc")
SIGNIFICANCE_SCHEMA = {
    "schema_version": INTEGER, "split": STRING, "method": STRING, "n_boot": INTEGER, "seed": INTEGER,
    "alpha": NUMBER, "n_studies": INTEGER, "metrics": _ListOf(STRING),
    "models": _ListOf({"key": STRING, "display_name": STRING}),
    # one entry per metric and unordered pair: difference = metric of a minus metric of b
    "pairs": _ListOf({"a": STRING, "b": STRING, "metric": STRING, "difference": _Nullable(NUMBER),
                      "mean_difference": _Nullable(NUMBER), "low": _Nullable(NUMBER), "high": _Nullable(NUMBER),
                      "n_valid": INTEGER, "p_value": _Nullable(NUMBER)}),
}
SUMMARY_SCHEMA = {
    "schema_version": INTEGER, "created_at": STRING, "demo": BOOLEAN, "description": STRING,
    "splits": _ListOf(STRING), "models": _ListOf({"key": STRING, "display_name": STRING}),
}


class _Mismatch(Exception):
    """Content that breaks a schema; callers turn it into ArtefactError or ValueError."""


def _check(value: object, spec: object, where: str) -> None:
    if isinstance(spec, _Nullable):
        if value is None:
            return
        spec = spec.spec
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise _Mismatch(f"{where}: expected an object, got {type(value).__name__}")
        for key, item_spec in spec.items():
            if key not in value:
                if isinstance(item_spec, _Optional):
                    continue
                raise _Mismatch(f"{where}: missing key {key!r}")
            _check(value[key], item_spec.spec if isinstance(item_spec, _Optional) else item_spec, f"{where}.{key}")
    elif isinstance(spec, _ListOf):
        if not isinstance(value, list) or (spec.length is not None and len(value) != spec.length):
            raise _Mismatch(f"{where}: expected a list" + (f" of {spec.length}" if spec.length else ""))
        for i, item in enumerate(value):
            _check(item, spec.item, f"{where}[{i}]")
    elif not _is_a(value, spec):
        raise _Mismatch(f"{where}: expected {'a finite ' if spec == NUMBER else 'a '}{spec}, got {value!r}")


def _is_a(value: object, kind: object) -> bool:
    if kind == BOOLEAN or isinstance(value, bool):
        return kind == BOOLEAN and isinstance(value, bool)
    if kind == INTEGER:
        return isinstance(value, int)
    if kind == NUMBER:
        return isinstance(value, int | float) and math.isfinite(value)
    return kind == STRING and isinstance(value, str)


# ---- Paths --------------------------------------------------------------------------------------------------

def summary_path(root: str | Path) -> Path:
    """Where an evaluation root's summary.json lives."""
    return Path(root) / "summary.json"


def history_path(root: str | Path, model_key: str) -> Path:
    """Where a model's history.csv lives."""
    return Path(root) / _checked_key(model_key) / "history.csv"


def predictions_path(root: str | Path, model_key: str, split: str) -> Path:
    """Where a model's predictions.csv for a split lives."""
    return _split_dir(root, model_key, split) / "predictions.csv"


def metrics_path(root: str | Path, model_key: str, split: str) -> Path:
    """Where a model's metrics.json for a split lives."""
    return _split_dir(root, model_key, split) / "metrics.json"


def curves_path(root: str | Path, model_key: str, split: str) -> Path:
    """Where a model's curves.json for a split lives."""
    return _split_dir(root, model_key, split) / "curves.json"


def significance_path(root: str | Path) -> Path:
    """Where an evaluation root's significance.json lives."""
    return Path(root) / "significance.json"


def _checked_key(model_key: str) -> str:
    if not _KEY_PATTERN.fullmatch(model_key):
        raise ValueError(f"Model key {model_key!r} must be lower-case letters, digits, '_' or '-'.")
    return model_key


def _checked_split(split: str) -> str:
    if split not in KNOWN_SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {', '.join(KNOWN_SPLITS)}.")
    return split


def _split_dir(root: str | Path, model_key: str, split: str) -> Path:
    return Path(root) / _checked_key(model_key) / _checked_split(split)


# ---- Tables (CSV) -------------------------------------------------------------------------------------------

def _canonical_predictions(frame: pd.DataFrame) -> pd.DataFrame:
    """PREDICTION_COLUMNS in order with fixed dtypes, or _Mismatch naming the first bad row."""
    _require_columns(frame, PREDICTION_COLUMNS)
    if frame.empty:
        raise _Mismatch("no prediction rows")
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
    return out


def _canonical_history(frame: pd.DataFrame) -> pd.DataFrame:
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
    return out


def _require_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise _Mismatch(f"missing column(s) {', '.join(missing)}; expected columns {', '.join(columns)}")


def _refuse_rows(frame: pd.DataFrame, bad: np.ndarray, reason: str) -> None:
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        where = f"data row {first + 1}"
        if "row_id" in frame:
            where = f"{frame['row_id'].iloc[first]!r} ({where})"
        raise _Mismatch(f"{reason} in {int(bad.sum())} row(s), first {where}")


def _read_csv(path: Path, canonical: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    if not path.is_file():
        raise ArtefactError(path, "file is missing")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        return canonical(frame)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ArtefactError(path, f"not a readable CSV ({error})") from error
    except _Mismatch as error:
        raise ArtefactError(path, str(error)) from error


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    # repr-precision floats, so a read gives back the very same numbers.
    write_text_atomic(path, frame.to_csv(index=False, float_format=None))


def _canonical_input(frame: pd.DataFrame, canonical: Callable[[pd.DataFrame], pd.DataFrame], name: str) -> pd.DataFrame:
    try:
        return canonical(frame)
    except _Mismatch as error:
        raise ValueError(f"{name}: {error}") from error


# ---- JSON documents -----------------------------------------------------------------------------------------

def _write_json(path: Path, document: dict, schema: dict) -> None:
    _check(document, schema, path.name)  # a writer bug must not produce a file the readers refuse
    write_text_atomic(path, json.dumps(document, indent=1, allow_nan=False) + "\n")


def _read_json(path: Path, schema: dict) -> dict:
    if not path.is_file():
        raise ArtefactError(path, "file is missing")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtefactError(path, f"not valid JSON, truncated or malformed ({error})") from error
    version = document.get("schema_version") if isinstance(document, dict) else None
    if version != SCHEMA_VERSION:
        raise ArtefactError(path, f"schema_version is {version!r}; this SpineCAD reads version {SCHEMA_VERSION}")
    try:
        _check(document, schema, path.stem)
    except _Mismatch as error:
        raise ArtefactError(path, str(error)) from error
    return document


def _read_split_json(path: Path, schema: dict, model_key: str, split: str) -> dict:
    document = _read_json(path, schema)
    if (document["model_key"], document["split"]) != (model_key, split):
        raise ArtefactError(path, f"holds {document['model_key']}/{document['split']}, not {model_key}/{split}")
    return document


# ---- Writers ------------------------------------------------------------------------------------------------

def write_split_evaluation(root: str | Path, model_key: str, split: str, predictions_df: pd.DataFrame,
                           n_boot: int = 1000, seed: int = 0, n_bins: int = 15, *,
                           calibrated_probs: np.ndarray | None = None, temperature: float | None = None,
                           calibration_method: str = "") -> dict:
    """Validate one model's predictions on one split, compute its metrics and curves, write all three files.

    ``calibrated_probs`` (same rows, e.g. temperature-scaled) adds their ECE and reliability curve beside the raw
    ones, with ``temperature`` (None for an ensemble) and ``calibration_method`` in words. Returns the metrics
    document as written. Bad input raises ValueError naming the first bad row.
    """
    _split_dir(root, model_key, split)  # refuse a bad key or split before the work
    predictions = _canonical_input(predictions_df, _canonical_predictions, "predictions_df")
    y_true = np.array([SEVERITIES.index(s) for s in predictions["severity"]])
    probs = predictions[list(SEVERITY_COLUMNS)].to_numpy()
    study_ids = predictions["study_id"].to_numpy()
    header = {"schema_version": SCHEMA_VERSION, "model_key": model_key, "split": split}
    metrics_document = {
        **header,
        "metrics": metrics.compute_metrics(y_true, probs),
        "intervals": metrics.bootstrap_intervals(study_ids, y_true, probs, n_boot=n_boot, seed=seed),
        "confusion": metrics.confusion_matrices(y_true, probs.argmax(axis=1)),
        "calibration": {"ece": metrics.expected_calibration_error(y_true, probs, n_bins), "n_bins": n_bins},
    }
    curves_document = {**header, "roc_pr": metrics.curve_points(y_true, probs),
                       "reliability": metrics.reliability_curve(y_true, probs, n_bins)}
    if calibrated_probs is not None:
        calibrated = np.asarray(calibrated_probs, dtype=float)
        if calibrated.shape != probs.shape:
            raise ValueError(f"calibrated_probs has shape {calibrated.shape}; the predictions have {probs.shape}.")
        metrics_document["calibration"]["calibrated"] = {
            "method": calibration_method, "temperature": None if temperature is None else float(temperature),
            "ece": metrics.expected_calibration_error(y_true, calibrated, n_bins)}
        curves_document["reliability_calibrated"] = metrics.reliability_curve(y_true, calibrated, n_bins)
    _write_csv(predictions_path(root, model_key, split), predictions)
    _write_json(curves_path(root, model_key, split), curves_document, CURVES_SCHEMA)
    _write_json(metrics_path(root, model_key, split), metrics_document, METRICS_SCHEMA)
    return metrics_document


def write_history(root: str | Path, model_key: str, history_rows: Iterable[Mapping] | pd.DataFrame) -> None:
    """Write a model's per-epoch training history (HISTORY_COLUMNS; NaN where a value was not measured)."""
    frame = history_rows if isinstance(history_rows, pd.DataFrame) else pd.DataFrame(list(history_rows))
    _write_csv(history_path(root, model_key), _canonical_input(frame, _canonical_history, "history_rows"))


def write_summary(root: str | Path, models: Sequence[ModelEntry | tuple[str, str]], splits: Sequence[str] = SPLITS,
                  demo: bool = False, description: str = "", created_at: datetime | None = None) -> EvaluationSummary:
    """Write summary.json listing the models (in column order) and splits of an evaluation root."""
    entries = tuple(m if isinstance(m, ModelEntry) else ModelEntry(*m) for m in models)
    keys = [_checked_key(entry.key) for entry in entries]
    if not keys or len(set(keys)) != len(keys):
        raise ValueError(f"models must list each model key once; got {keys}.")
    for split in splits:
        _checked_split(split)
    summary = EvaluationSummary(SCHEMA_VERSION, (created_at or datetime.now(UTC)).isoformat(timespec="seconds"),
                                bool(demo), description, tuple(splits), entries)
    document = {**asdict(summary), "splits": list(splits), "models": [asdict(entry) for entry in entries]}
    _write_json(summary_path(root), document, SUMMARY_SCHEMA)
    return summary


def write_significance(root: str | Path, split: str = "test", model_keys: Sequence[str] | None = None,
                       metrics_names: Sequence[str] = SIGNIFICANCE_METRICS, n_boot: int = 1000, seed: int = 0,
                       alpha: float = 0.05) -> dict:
    """Paired patient-level bootstrap of the difference between every two models of the summary (ensemble
    included) on ``split``, from their stored predictions.csv; written to significance.json and returned."""
    summary = load_summary(root)
    names = {m.key: m.display_name for m in summary.models}
    keys = list(model_keys) if model_keys is not None else list(names)
    frames = {key: load_predictions(root, key, split).set_index("row_id") for key in keys}
    base = frames[keys[0]]
    for key, frame in frames.items():
        if set(frame.index) != set(base.index) or not frame.loc[base.index, "severity"].equals(base["severity"]):
            raise ValueError(f"{predictions_path(root, key, split)} does not hold the same rows as {keys[0]}'s.")
    y_true = np.array([SEVERITIES.index(s) for s in base["severity"]])
    study_ids = base["study_id"].to_numpy()
    probs = {key: frames[key].loc[base.index, list(SEVERITY_COLUMNS)].to_numpy() for key in keys}
    document = {
        "schema_version": SCHEMA_VERSION, "split": _checked_split(split),
        "method": "paired patient-level percentile bootstrap (the same resampled studies for every model)",
        "n_boot": n_boot, "seed": seed, "alpha": alpha, "n_studies": len(np.unique(study_ids)),
        "metrics": list(metrics_names), "models": [{"key": key, "display_name": names[key]} for key in keys],
        "pairs": metrics.paired_bootstrap_differences(study_ids, y_true, probs, metrics_names, n_boot, seed, alpha),
    }
    _write_json(significance_path(root), document, SIGNIFICANCE_SCHEMA)
    return document


# ---- Readers ------------------------------------------------------------------------------------------------

def load_summary(root: str | Path) -> EvaluationSummary:
    """Read and validate summary.json."""
    path = summary_path(root)
    document = _read_json(path, SUMMARY_SCHEMA)
    keys = [m["key"] for m in document["models"]]
    try:
        for key in keys:
            _checked_key(key)
        for split in document["splits"]:
            _checked_split(split)
    except ValueError as error:
        raise ArtefactError(path, str(error)) from error
    if not keys or len(set(keys)) != len(keys):
        raise ArtefactError(path, f"models must list each model key once; got {keys}")
    return EvaluationSummary(document["schema_version"], document["created_at"], document["demo"],
                             document["description"], tuple(document["splits"]),
                             tuple(ModelEntry(m["key"], m["display_name"]) for m in document["models"]))


def load_metrics(root: str | Path, model_key: str, split: str) -> dict:
    """Read and validate a metrics.json (keys: metrics, intervals, confusion, calibration)."""
    return _read_split_json(metrics_path(root, model_key, split), METRICS_SCHEMA, model_key, split)


def load_curves(root: str | Path, model_key: str, split: str) -> dict:
    """Read and validate a curves.json (keys: roc_pr per grade, reliability)."""
    return _read_split_json(curves_path(root, model_key, split), CURVES_SCHEMA, model_key, split)


def load_predictions(root: str | Path, model_key: str, split: str) -> pd.DataFrame:
    """Read and validate a predictions.csv (PREDICTION_COLUMNS)."""
    return _read_csv(predictions_path(root, model_key, split), _canonical_predictions)


def load_history(root: str | Path, model_key: str) -> pd.DataFrame:
    """Read and validate a model's history.csv (HISTORY_COLUMNS)."""
    return _read_csv(history_path(root, model_key), _canonical_history)


def load_significance(root: str | Path) -> dict:
    """Read and validate significance.json (keys: split, n_boot, seed, alpha, metrics, models, pairs)."""
    path = significance_path(root)
    document = _read_json(path, SIGNIFICANCE_SCHEMA)
    keys = {m["key"] for m in document["models"]}
    strays = sorted({k for pair in document["pairs"] for k in (pair["a"], pair["b"])} - keys)
    if strays or any(pair["metric"] not in document["metrics"] for pair in document["pairs"]):
        raise ArtefactError(path, f"pairs name models or metrics it does not list ({', '.join(strays) or 'metric'})")
    return document


def validate_tree(root: str | Path) -> list[Path]:
    """Check every artefact the summary lists (and each history.csv present); return the files checked.

    Raises one ArtefactError listing every problem found.
    """
    summary = load_summary(root)
    checked, problems = [summary_path(root)], []
    for model in summary.models:
        for split in summary.splits:
            try:
                predictions = load_predictions(root, model.key, split)
                document = load_metrics(root, model.key, split)
                load_curves(root, model.key, split)
                checked += [predictions_path(root, model.key, split), metrics_path(root, model.key, split),
                            curves_path(root, model.key, split)]
                counts = predictions["severity"].value_counts()
                if document["metrics"]["class_counts"] != {g: int(counts.get(g, 0)) for g in SEVERITIES}:
                    raise ArtefactError(metrics_path(root, model.key, split),
                                        "class counts differ from predictions.csv (one of them is stale)")
            except ArtefactError as error:
                problems.append(str(error))
        if history_path(root, model.key).is_file():
            try:
                load_history(root, model.key)
                checked.append(history_path(root, model.key))
            except ArtefactError as error:
                problems.append(str(error))
    if significance_path(root).is_file():
        try:
            document = load_significance(root)
            unknown = sorted({m["key"] for m in document["models"]} - {m.key for m in summary.models})
            if unknown:
                raise ArtefactError(significance_path(root), f"names models the summary does not: {unknown}")
            checked.append(significance_path(root))
        except ArtefactError as error:
            problems.append(str(error))
    if problems:
        raise ArtefactError(Path(root), f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return checked


# ---- Derived views ------------------------------------------------------------------------------------------

def mean_ensemble(predictions: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The "ensemble" predictions: per row, the mean of the models' probabilities (same rows required)."""
    frames = [_canonical_input(frame, _canonical_predictions, f"predictions[{i}]")
              for i, frame in enumerate(predictions)]
    if not frames:
        raise ValueError("mean_ensemble needs at least one model's predictions.")
    base = frames[0].set_index("row_id")
    aligned = []
    for i, frame in enumerate(frames):
        indexed = frame.set_index("row_id")
        if set(indexed.index) != set(base.index) or not indexed.loc[base.index, "severity"].equals(base["severity"]):
            raise ValueError(f"predictions[{i}] does not hold the same rows and true grades as predictions[0].")
        aligned.append(indexed.loc[base.index, list(SEVERITY_COLUMNS)].to_numpy())
    ensemble = frames[0].copy()
    ensemble[list(SEVERITY_COLUMNS)] = np.mean(aligned, axis=0)
    return ensemble


TABLE_ROWS: tuple[tuple[str, str], ...] = (
    ("Accuracy", "accuracy"), ("Macro F1", "macro_f1"), ("Weighted F1", "weighted_f1"),
    ("Macro ROC-AUC", "macro_roc_auc"), ("Macro PR-AUC", "macro_pr_auc"),
)
TABLE_CLASS_ROWS: tuple[tuple[str, str], ...] = (
    ("Precision", "precision"), ("Recall", "recall"), ("F1-Score", "f1"), ("ROC-AUC", "roc_auc"), ("PR-AUC", "pr_auc"),
)


def build_metrics_table(metrics_by_column: Mapping[str, Mapping],
                        intervals_by_column: Mapping[str, Mapping] | None = None, digits: int = 3) -> pd.DataFrame:
    """Table 2 layout: rows indexed (group, metric), groups "Overall" then each grade; one column per entry.

    ``metrics_by_column`` maps a column name to a compute_metrics dict (a ScoreResult works too). Without
    intervals the cells are floats (NaN = undefined); with them, strings like "0.872 [0.851, 0.890]".
    """
    rows = [("Overall", label, None, name) for label, name in TABLE_ROWS]
    rows += [(grade, label, grade, name) for grade in SEVERITIES for label, name in TABLE_CLASS_ROWS]
    index = pd.MultiIndex.from_tuples([(group, label) for group, label, _, _ in rows], names=["group", "metric"])
    table = {}
    for column, values in metrics_by_column.items():
        intervals = (intervals_by_column or {}).get(column)
        cells = []
        for _, _, grade, name in rows:
            estimate = values[name] if grade is None else values["per_class"][grade][name]
            if intervals_by_column is None:
                cells.append(np.nan if estimate is None else estimate)
                continue
            interval = None if intervals is None else (
                intervals["overall"][name] if grade is None else intervals["per_class"][grade][name])
            cells.append(_with_interval(estimate, interval, digits))
        table[column] = cells
    return pd.DataFrame(table, index=index)


def _with_interval(estimate: float | None, interval: Mapping | None, digits: int) -> str:
    if estimate is None:
        return "n/a"
    if interval is None or interval["low"] is None:
        return f"{estimate:.{digits}f}"
    return f"{estimate:.{digits}f} [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"


def metrics_table(root: str | Path, split: str, model_keys: Sequence[str] | None = None,
                  with_intervals: bool = False, digits: int = 3) -> pd.DataFrame:
    """The paper's Table 2 for one split of an evaluation root; columns are the models' display names."""
    summary = load_summary(root)
    names = {m.key: m.display_name for m in summary.models}
    keys = list(model_keys) if model_keys is not None else list(names)
    unknown = [k for k in keys if k not in names]
    if unknown:
        raise ValueError(f"{summary_path(root)} lists no model {', '.join(unknown)}; it lists {', '.join(names)}.")
    documents = {names[k]: load_metrics(root, k, split) for k in keys}
    return build_metrics_table({name: doc["metrics"] for name, doc in documents.items()},
                               {name: doc["intervals"] for name, doc in documents.items()} if with_intervals else None,
                               digits)
