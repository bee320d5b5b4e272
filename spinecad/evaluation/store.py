"""Reading and writing the evaluation artefacts (format: ``spinecad.evaluation.artefacts``), in one module.

Every file is written atomically (``spinecad.atomic``) and validated before it is written, so a writer bug cannot
leave a file the readers refuse. Every reader validates what it reads and raises ``ArtefactError`` naming the file
and the field path of the first problem; ``validate_tree`` checks a whole root.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import BaseModel, TypeAdapter, ValidationError

from spinecad.atomic import atomic_path, write_text_atomic
from spinecad.evaluation import bootstrap, metrics
from spinecad.evaluation.artefacts import (
    ENSEMBLE_KEY,
    EVALUATED_SPLITS,
    HISTORY_COLUMNS,
    LOCALIZER_POINT_COLUMNS,
    PREDICTION_COLUMNS,
    SCHEMA_VERSION,
    ArtefactError,
    CurvesDocument,
    EvaluatedModel,
    LocalizerDocument,
    LocalizerPointRow,
    MetricsDocument,
    SignificanceDocument,
    Summary,
    checked_key,
    checked_split,
)
from spinecad.evaluation.tables import (
    TableError,
    aligned_probabilities,
    canonical_history,
    canonical_input,
    canonical_predictions,
    mean_ensemble,
    read_csv,
    write_csv,
)
from spinecad.labels import SEVERITIES, SEVERITY_COLUMNS

__all__ = ["ENSEMBLE_KEY", "EVALUATED_SPLITS", "HISTORY_COLUMNS", "PREDICTION_COLUMNS", "SIGNIFICANCE_METRICS",
           "ArtefactError", "mean_ensemble"]

SIGNIFICANCE_METRICS: tuple[str, ...] = ("macro_f1", "macro_roc_auc")
Document = TypeVar("Document", bound=BaseModel)


# ---- Paths --------------------------------------------------------------------------------------------------

def summary_path(root: str | Path) -> Path:
    """Where an evaluation root's summary.json lives."""
    return Path(root) / "summary.json"


def history_path(root: str | Path, model_key: str) -> Path:
    """Where a model's history.csv lives."""
    return Path(root) / checked_key(model_key) / "history.csv"


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


def _split_dir(root: str | Path, model_key: str, split: str) -> Path:
    return Path(root) / checked_key(model_key) / checked_split(split)


def localizer_dir(root: str | Path, key: str, split: str) -> Path:
    """Where a localiser's artefacts for a split live: points.csv, metrics.json and example slices."""
    return Path(root) / "localizers" / checked_key(key) / checked_split(split)


# ---- JSON documents -----------------------------------------------------------------------------------------

def _problem(error: ValidationError) -> str:
    """The first problem of a validation error, with the path of the field, e.g. ``metrics.per_class.Severe.f1``."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "document"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _write_json(path: Path, document: BaseModel) -> None:
    write_text_atomic(path, json.dumps(document.model_dump(mode="json"), indent=1, allow_nan=False) + "\n")


def _read_json(path: Path, model: type[Document]) -> Document:
    if not path.is_file():
        raise ArtefactError(path, "file is missing")
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtefactError(path, f"not valid JSON, truncated or malformed ({error})") from error
    version = values.get("schema_version") if isinstance(values, dict) else None
    if version != SCHEMA_VERSION:
        raise ArtefactError(path, f"schema_version is {version!r}; this SpineCAD reads version {SCHEMA_VERSION}")
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        raise ArtefactError(path, _problem(error)) from error


def _read_split_json(path: Path, model: type[Document], model_key: str, split: str) -> Document:
    document = _read_json(path, model)
    if (document.model_key, document.split) != (model_key, split):
        raise ArtefactError(path, f"holds {document.model_key}/{document.split}, not {model_key}/{split}")
    return document


# ---- Writers ------------------------------------------------------------------------------------------------

def write_split_evaluation(root: str | Path, model_key: str, split: str, predictions_df: pd.DataFrame,
                           n_boot: int = 1000, seed: int = 0, n_bins: int = 15, *,
                           calibrated_probs: np.ndarray | None = None, temperature: float | None = None,
                           calibration_method: str = "",
                           base_calibrated_probs: np.ndarray | None = None) -> MetricsDocument:
    """Validate one model's predictions on one split, compute its metrics and curves, write all three files.

    ``calibrated_probs`` (same rows, e.g. temperature-scaled) adds their ECE and reliability curve beside the raw
    ones, with ``temperature`` and ``calibration_method`` in words; ``base_calibrated_probs`` are what that
    temperature was applied to, when it rescales an ensemble's mean (their ECE and log loss are kept). Returns the
    metrics document as written. Bad input raises ValueError naming the first bad row.
    """
    _split_dir(root, model_key, split)  # refuse a bad key or split before the work
    predictions = canonical_input(predictions_df, canonical_predictions, "predictions_df")
    y_true = np.array([SEVERITIES.index(s) for s in predictions["severity"]])
    probs = predictions[list(SEVERITY_COLUMNS)].to_numpy()
    study_ids = predictions["study_id"].to_numpy()
    header = {"schema_version": SCHEMA_VERSION, "model_key": model_key, "split": split}
    calibration: dict = {"ece": metrics.expected_calibration_error(y_true, probs, n_bins), "n_bins": n_bins,
                         "log_loss": metrics.mean_log_loss(y_true, probs)}
    curves = {**header, "roc_pr": metrics.curve_points(y_true, probs),
              "reliability": metrics.reliability_curve(y_true, probs, n_bins)}
    if calibrated_probs is not None:
        calibrated = np.asarray(calibrated_probs, dtype=float)
        if calibrated.shape != probs.shape:
            raise ValueError(f"calibrated_probs has shape {calibrated.shape}; the predictions have {probs.shape}.")
        calibration["calibrated"] = {
            "method": calibration_method, "temperature": None if temperature is None else float(temperature),
            "ece": metrics.expected_calibration_error(y_true, calibrated, n_bins),
            "log_loss": metrics.mean_log_loss(y_true, calibrated)}
        if base_calibrated_probs is not None:
            base = np.asarray(base_calibrated_probs, dtype=float)
            calibration["calibrated"] |= {"base_ece": metrics.expected_calibration_error(y_true, base, n_bins),
                                          "base_log_loss": metrics.mean_log_loss(y_true, base)}
        curves["reliability_calibrated"] = metrics.reliability_curve(y_true, calibrated, n_bins)
    document = MetricsDocument.model_validate({
        **header,
        "metrics": metrics.compute_metrics(y_true, probs, study_ids),
        "intervals": bootstrap.bootstrap_intervals(study_ids, y_true, probs, n_boot=n_boot, seed=seed),
        "confusion": metrics.confusion_matrices(y_true, probs.argmax(axis=1)),
        "calibration": calibration,
    })
    write_csv(predictions_path(root, model_key, split), predictions)
    _write_json(curves_path(root, model_key, split), CurvesDocument.model_validate(curves))
    _write_json(metrics_path(root, model_key, split), document)
    return document


def write_history(root: str | Path, model_key: str, history_rows: Iterable[Mapping] | pd.DataFrame) -> None:
    """Write a model's per-epoch training history (HISTORY_COLUMNS; NaN where a value was not measured)."""
    frame = history_rows if isinstance(history_rows, pd.DataFrame) else pd.DataFrame(list(history_rows))
    write_csv(history_path(root, model_key), canonical_input(frame, canonical_history, "history_rows"))


def write_summary(root: str | Path, models: Sequence[EvaluatedModel | tuple[str, str]],
                  splits: Sequence[str] = EVALUATED_SPLITS, demo: bool = False, description: str = "",
                  created_at: datetime | None = None) -> Summary:
    """Write summary.json listing the models (in column order) and splits of an evaluation root."""
    entries = tuple(m if isinstance(m, EvaluatedModel) else EvaluatedModel(key=m[0], display_name=m[1])
                    for m in models)
    keys = [checked_key(entry.key) for entry in entries]
    if not keys or len(set(keys)) != len(keys):
        raise ValueError(f"models must list each model key once; got {keys}.")
    for split in splits:
        checked_split(split)
    summary = Summary(schema_version=SCHEMA_VERSION,
                      created_at=(created_at or datetime.now(UTC)).isoformat(timespec="seconds"),
                      demo=bool(demo), description=description, splits=tuple(splits), models=entries)
    _write_json(summary_path(root), summary)
    return summary


def write_significance(root: str | Path, split: str = "test", model_keys: Sequence[str] | None = None,
                       metrics_names: Sequence[str] = SIGNIFICANCE_METRICS, n_boot: int = 1000, seed: int = 0,
                       alpha: float = 0.05) -> SignificanceDocument:
    """Paired patient-level bootstrap of the difference between every two models of the summary (ensemble
    included) on ``split``, from their stored predictions.csv; written to significance.json and returned."""
    names = load_summary(root).display_names()
    keys = list(model_keys) if model_keys is not None else list(names)
    base, by_path = aligned_probabilities({str(predictions_path(root, key, split)): load_predictions(root, key, split)
                                           for key in keys})
    y_true = np.array([SEVERITIES.index(s) for s in base["severity"]])
    study_ids = base["study_id"].to_numpy()
    probs = dict(zip(keys, by_path.values(), strict=True))
    document = SignificanceDocument.model_validate({
        "schema_version": SCHEMA_VERSION, "split": checked_split(split),
        "method": "paired patient-level percentile bootstrap (the same resampled studies for every model)",
        "n_boot": n_boot, "seed": seed, "alpha": alpha, "n_studies": len(np.unique(study_ids)),
        "metrics": list(metrics_names), "models": [{"key": key, "display_name": names[key]} for key in keys],
        "pairs": bootstrap.paired_bootstrap_differences(study_ids, y_true, probs, metrics_names, n_boot, seed, alpha),
    })
    _write_json(significance_path(root), document)
    return document


# ---- Readers ------------------------------------------------------------------------------------------------

def load_summary(root: str | Path) -> Summary:
    """Read and validate summary.json."""
    path = summary_path(root)
    summary = _read_json(path, Summary)
    keys = [m.key for m in summary.models]
    try:
        for key in keys:
            checked_key(key)
    except ValueError as error:
        raise ArtefactError(path, str(error)) from error
    if not keys or len(set(keys)) != len(keys):
        raise ArtefactError(path, f"models must list each model key once; got {keys}")
    return summary


def load_metrics(root: str | Path, model_key: str, split: str) -> MetricsDocument:
    """Read and validate a metrics.json."""
    return _read_split_json(metrics_path(root, model_key, split), MetricsDocument, model_key, split)


def load_curves(root: str | Path, model_key: str, split: str) -> CurvesDocument:
    """Read and validate a curves.json."""
    return _read_split_json(curves_path(root, model_key, split), CurvesDocument, model_key, split)


def load_predictions(root: str | Path, model_key: str, split: str) -> pd.DataFrame:
    """Read and validate a predictions.csv (PREDICTION_COLUMNS)."""
    return read_csv(predictions_path(root, model_key, split), canonical_predictions)


def load_history(root: str | Path, model_key: str) -> pd.DataFrame:
    """Read and validate a model's history.csv (HISTORY_COLUMNS)."""
    return read_csv(history_path(root, model_key), canonical_history)


def load_significance(root: str | Path) -> SignificanceDocument:
    """Read and validate significance.json."""
    path = significance_path(root)
    document = _read_json(path, SignificanceDocument)
    keys = {m.key for m in document.models}
    strays = sorted({k for pair in document.pairs for k in (pair.a, pair.b)} - keys)
    if strays or any(pair.metric not in document.metrics for pair in document.pairs):
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
                if document.metrics.class_counts != {g: int(counts.get(g, 0)) for g in SEVERITIES}:
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
            unknown = sorted({m.key for m in document.models} - {m.key for m in summary.models})
            if unknown:
                raise ArtefactError(significance_path(root), f"names models the summary does not: {unknown}")
            checked.append(significance_path(root))
        except ArtefactError as error:
            problems.append(str(error))
    if problems:
        raise ArtefactError(Path(root), f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return checked


# ---- The disc-level localiser --------------------------------------------------------------------------------

def write_localizer_evaluation(root: str | Path, key: str, split: str, points: pd.DataFrame,
                               document: LocalizerDocument) -> None:
    """Validate and write a localiser's points.csv and metrics.json for one split."""
    folder = localizer_dir(root, key, split)
    if (document.model_key, document.split) != (key, split):
        raise ValueError(f"the document holds {document.model_key}/{document.split}, not {key}/{split}")
    table = points[list(LOCALIZER_POINT_COLUMNS)]
    TypeAdapter(list[LocalizerPointRow]).validate_python(table.astype(object).where(table.notna(), None)
                                                         .to_dict(orient="records"))
    write_csv(folder / "points.csv", table)
    _write_json(folder / "metrics.json", document)


def load_localizer_metrics(root: str | Path, key: str, split: str) -> LocalizerDocument:
    """Read and validate a localiser's metrics.json."""
    return _read_split_json(localizer_dir(root, key, split) / "metrics.json", LocalizerDocument, key, split)


def load_localizer_points(root: str | Path, key: str, split: str) -> pd.DataFrame:
    """Read and validate a localiser's points.csv (LOCALIZER_POINT_COLUMNS)."""
    return read_csv(localizer_dir(root, key, split) / "points.csv", _canonical_points)


def _canonical_points(frame: pd.DataFrame) -> pd.DataFrame:
    """points.csv as read (text) -> typed columns, checked against LocalizerPointRow (TableError otherwise)."""
    missing = [column for column in LOCALIZER_POINT_COLUMNS if column not in frame.columns]
    if missing:
        raise TableError(f"missing column(s) {', '.join(missing)}")
    flags = {"True": True, "False": False}
    table = pd.DataFrame({column: pd.to_numeric(frame[column], errors="coerce") for column in
                          ("study_id", "x_true", "y_true", "x_pred", "y_pred", "confidence", "error_mm")})
    table.insert(1, "level", frame["level"])
    table["same_axial"] = frame["same_axial"].map(lambda value: flags.get(value, value))
    table["neighbour_mixup"] = frame["neighbour_mixup"].map(lambda value: flags.get(value, value))
    table = table[list(LOCALIZER_POINT_COLUMNS)]
    records = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    for record in records:
        if isinstance(record["study_id"], float) and record["study_id"].is_integer():
            record["study_id"] = int(record["study_id"])
    try:
        TypeAdapter(list[LocalizerPointRow]).validate_python(records)
    except ValidationError as error:
        raise TableError(_problem(error)) from error
    return table.astype({"study_id": "int64"})


def localizer_example_path(root: str | Path, key: str, split: str, study_id: int) -> Path:
    """Where one example slice of a localiser's evaluation lives (greyscale PNG, the slice's own pixels)."""
    return localizer_dir(root, key, split) / f"{int(study_id)}.png"


def write_localizer_example(root: str | Path, key: str, split: str, study_id: int, pixels: np.ndarray) -> Path:
    """Write a [0, 1] slice as an 8-bit PNG, atomically."""
    path = localizer_example_path(root, key, split, study_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as staging:
        Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(staging, format="PNG")
    return path
