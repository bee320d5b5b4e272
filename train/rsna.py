"""RSNA 2024 Kaggle-layout ingestion: one row per (study, disc level) with its canal grade and axial slice."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError

from spinecad.atomic import atomic_path
from spinecad.labels import CONDITION, LEVEL_KEYS, LEVELS, SEVERITIES, level_index
from spinecad.study.geometry import MAX_DISTANCE_MM, GeometryError, Plane, nearest_slice

REQUIRED_CSVS: tuple[str, ...] = ("train.csv", "train_series_descriptions.csv", "train_label_coordinates.csv")
IMAGES_DIR = "train_images"
AXIAL_T2 = "Axial T2"
SAGITTAL_T2 = "Sagittal T2/STIR"
LEFT, RIGHT = "left_subarticular_stenosis", "right_subarticular_stenosis"
MAX_GEOMETRY_DISTANCE_MM = MAX_DISTANCE_MM  # beyond it the axial stack does not cover the level
# The index file format, written down once: column -> what it holds.
INDEX_COLUMNS: dict[str, str] = {
    "study_id": "RSNA study (one patient)",
    "level": 'disc level as LEVELS spells it, e.g. "L4/L5"',
    "severity": "canal grade as SEVERITIES spells it; empty unless label_status is ok",
    "label_status": "ok | missing_label (empty in train.csv) | invalid_label (not one of SEVERITIES)",
    "series_id": "Axial T2 series of the chosen slice (empty if none chosen)",
    "instance_number": "chosen axial slice (empty if none chosen)",
    "rule": "which rule chose the slice, one of RULES",
    "geometry_distance_mm": "distance from the canal point to the chosen slice's plane (geometry rules only)",
    "image_path": "train_images/<study>/<series>/<instance>.dcm, relative to SampleIndex.root",
    "image_status": "present | missing_file | not_checked (images not read, or no slice chosen)",
    "usable": "label ok, a slice chosen and its file present or not checked",
}
RULES: dict[str, str] = {
    "subarticular_agree": "left and right subarticular points name the same axial slice",
    "subarticular_left_only": "only the left subarticular point exists",
    "subarticular_right_only": "only the right subarticular point exists",
    "geometry_nearest_canal_point": "points disagree or are absent: axial slice nearest the sagittal canal point",
    "subarticular_disagree_no_geometry": "points disagree and geometry is unavailable: the left point's slice",
    "geometry_too_far": f"the nearest axial slice is over {MAX_GEOMETRY_DISTANCE_MM:g} mm away: level not covered",
    "no_axial_series": "the study has no Axial T2 series",
    "no_instance": "no subarticular point and no usable geometry",
    "manifest": "slice given by a manifest CSV",
}
_CSV_COLUMNS = {
    "train.csv": ("study_id", *(f"{CONDITION}_{key}" for key in LEVEL_KEYS)),
    "train_series_descriptions.csv": ("study_id", "series_id", "series_description"),
    "train_label_coordinates.csv": ("study_id", "series_id", "instance_number", "condition", "level", "x", "y"),
}
_HEADER_TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"]


class DatasetLayoutError(ValueError):
    """A dataset folder or file that cannot be read as the RSNA 2024 Kaggle layout or a slice manifest."""


@dataclass(frozen=True)
class SampleIndex:
    """Every (study, level) row with its label and slice choice; ``image_path`` is relative to ``root``."""

    rows: pd.DataFrame
    counts: dict
    problems: list[str] = field(default_factory=list)
    root: Path = Path(".")

    def image_file(self, image_path: str) -> Path:
        """Absolute path of a row's ``image_path`` (absolute paths pass through)."""
        return self.root / image_path


def _read_csv(data_dir: Path, name: str) -> pd.DataFrame:
    path = data_dir / name
    if not path.is_file():
        raise DatasetLayoutError(
            f"{path} is missing; an RSNA 2024 Kaggle folder holds {', '.join(REQUIRED_CSVS)} (and {IMAGES_DIR}/)."
        )
    frame = pd.read_csv(path)
    absent = [column for column in _CSV_COLUMNS[name] if column not in frame.columns]
    if absent:
        raise DatasetLayoutError(f"{path} lacks column(s) {', '.join(absent)}.")
    return frame


def _canonical_level(level: object) -> str | None:
    try:
        return LEVELS[level_index(str(level))]
    except ValueError:
        return None


def _label_status(value: object, where: str, problems: list[str]) -> tuple[str | None, str]:
    """Map a CSV grade to (severity, label_status), noting an invalid one in ``problems``."""
    if pd.isna(value):
        return None, "missing_label"
    if value in SEVERITIES:
        return str(value), "ok"
    problems.append(f"{where}: {value!r} is not one of {', '.join(SEVERITIES)}")
    return None, "invalid_label"


def _coordinate_points(coords: pd.DataFrame, series_kind: dict[tuple[int, int], str], problems: list[str]) -> dict:
    """Index annotated points by (study, level, condition) -> (series, instance, x, y), keeping the first."""
    coords = coords.assign(
        condition=coords["condition"].astype(str).str.strip().str.lower().str.replace(" ", "_"),
        level=coords["level"].map(_canonical_level),
    )
    unknown_levels = int(coords["level"].isna().sum())
    if unknown_levels:
        problems.append(f"train_label_coordinates.csv: {unknown_levels} point(s) with an unknown level ignored")
    points: dict = {}
    for study, series, instance, condition, level, x, y in coords[
        ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    ].itertuples(index=False):
        if level is None or pd.isna(level):
            continue
        kind = series_kind.get((int(study), int(series)))
        # Subarticular points must name an axial slice; canal points must lie on a sagittal image.
        if condition in (LEFT, RIGHT) and kind != AXIAL_T2:
            continue
        if condition == CONDITION and (kind is None or not kind.startswith("Sagittal")):
            continue
        key = (int(study), level, condition)
        candidate = (int(series), int(instance), float(x), float(y), kind)
        held = points.get(key)
        # Prefer a canal point on Sagittal T2/STIR over one on Sagittal T1.
        if held is None or (condition == CONDITION and held[4] != SAGITTAL_T2 and kind == SAGITTAL_T2):
            points[key] = candidate
    return points


class _Geometry:
    """Reads DICOM headers once per file and picks the axial slice nearest to a sagittal canal point."""

    def __init__(self, images_dir: Path, problems: list[str]):
        self.images_dir = images_dir
        self.problems = problems
        self._planes: dict[Path, Plane | None] = {}
        self._slices: dict[Path, list[Path]] = {}

    def plane(self, path: Path) -> Plane | None:
        if path not in self._planes:
            self._planes[path] = self._read_plane(path)
        return self._planes[path]

    def _read_plane(self, path: Path) -> Plane | None:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            return Plane.from_header(header.ImagePositionPatient, header.ImageOrientationPatient,
                                     header.PixelSpacing, header.Rows, header.Columns)
        except (OSError, InvalidDicomError, AttributeError, GeometryError) as error:
            self.problems.append(f"{path}: geometry header unreadable ({error})")
            return None

    def nearest_axial(self, study: int, canal_point: tuple, axial_series: list[int]) -> tuple[int, int, float] | None:
        """(series, instance, distance mm) of the axial slice nearest the canal point, or None if unreadable."""
        series, instance, x, y, _ = canal_point
        sagittal = self.plane(self.images_dir / str(study) / str(series) / f"{instance}.dcm")
        if sagittal is None:
            return None
        slices = []  # (series, instance) in a fixed order, so ties go to the first series and lowest instance
        for axial in axial_series:
            folder = self.images_dir / str(study) / str(axial)
            if folder not in self._slices:
                self._slices[folder] = sorted((path for path in folder.glob("*.dcm") if path.stem.isdigit()),
                                              key=lambda path: int(path.stem))
            slices += [(axial, path) for path in self._slices[folder]]
        nearest = nearest_slice([self.plane(path) for _, path in slices], sagittal.to_patient(x, y))
        if nearest is None:
            self.problems.append(f"study {study}: no readable slice in Axial T2 series {axial_series} for geometry")
            return None
        axial, path = slices[nearest.index]
        return axial, int(path.stem), nearest.distance_mm


def _choose_instance(
    study: int, level: str, points: dict, axial_series: list[int], geometry: _Geometry | None
) -> tuple[int | None, int | None, str, float | None]:
    """Pick the axial (series, instance) for a level and name the rule (see RULES) that chose it.

    Disagreeing points without geometry take the left reader's slice: the two sides are one slice apart in ~72% of
    the real disagreements, so neither is better, and a fixed side keeps the index reproducible.
    """
    if not axial_series:
        return None, None, "no_axial_series", None
    left, right = points.get((study, level, LEFT)), points.get((study, level, RIGHT))
    if left and right and left[:2] == right[:2]:
        return left[0], left[1], "subarticular_agree", None
    if left and not right:
        return left[0], left[1], "subarticular_left_only", None
    if right and not left:
        return right[0], right[1], "subarticular_right_only", None
    canal = points.get((study, level, CONDITION))
    if geometry is not None and canal is not None:
        # On disagreement only the series the readers used compete; otherwise every Axial T2 series.
        candidates = sorted({left[0], right[0]}) if left else axial_series
        found = geometry.nearest_axial(study, canal, candidates)
        if found is not None:
            series, instance, distance = found
            if distance > MAX_GEOMETRY_DISTANCE_MM:
                return None, None, "geometry_too_far", distance
            return series, instance, "geometry_nearest_canal_point", distance
    if left:
        return left[0], left[1], "subarticular_disagree_no_geometry", None
    return None, None, "no_instance", None


def build_sample_index(data_dir: Path, *, read_images: bool | None = None) -> SampleIndex:
    """Index every (study, level) of train.csv; ``read_images`` None uses images when train_images/ exists."""
    data_dir = Path(data_dir)
    train, descriptions, coords = (_read_csv(data_dir, name) for name in REQUIRED_CSVS)
    images_dir = data_dir / IMAGES_DIR
    if read_images is None:
        read_images = images_dir.is_dir()
    elif read_images and not images_dir.is_dir():
        raise DatasetLayoutError(f"read_images=True but {images_dir} is missing.")
    problems: list[str] = []
    series_kind = {
        (int(study), int(series)): str(kind)
        for study, series, kind in descriptions[["study_id", "series_id", "series_description"]].itertuples(index=False)
    }
    axial_by_study: dict[int, list[int]] = {}
    for (study, series), kind in sorted(series_kind.items()):
        if kind == AXIAL_T2:
            axial_by_study.setdefault(study, []).append(series)
    points = _coordinate_points(coords, series_kind, problems)
    geometry = _Geometry(images_dir, problems) if read_images else None

    records = []
    for row_number, train_row in enumerate(train.itertuples(index=False), start=1):
        study = int(train_row.study_id)
        for level, key in zip(LEVELS, LEVEL_KEYS, strict=True):
            value = getattr(train_row, f"{CONDITION}_{key}")
            where = f"train.csv row {row_number} (study {study}, {level})"
            severity, label_status = _label_status(value, where, problems)
            series, instance, rule, distance = _choose_instance(
                study, level, points, axial_by_study.get(study, []), geometry
            )
            image_path = None if series is None else f"{IMAGES_DIR}/{study}/{series}/{instance}.dcm"
            image_status = "not_checked"
            if read_images and image_path is not None:
                image_status = "present" if (data_dir / image_path).is_file() else "missing_file"
                if image_status == "missing_file":
                    problems.append(f"{image_path} is missing (study {study}, {level}, rule {rule})")
            records.append({
                "study_id": study, "level": level, "severity": severity, "label_status": label_status,
                "series_id": series, "instance_number": instance, "rule": rule, "geometry_distance_mm": distance,
                "image_path": image_path, "image_status": image_status,
                "usable": label_status == "ok" and image_path is not None and image_status != "missing_file",
            })
    rows = _typed_rows(records)
    counts = _count(rows, problems)
    counts["images_read"] = bool(read_images)
    counts["n_studies_several_axial_t2"] = sum(
        len(axial_by_study.get(int(study), [])) > 1 for study in train["study_id"].unique()
    )
    train_studies = set(train["study_id"].astype(int))
    counts["n_studies_not_in_train_csv"] = len({study for study, _ in series_kind} - train_studies)
    if counts["n_studies_not_in_train_csv"]:
        problems.append(f"{counts['n_studies_not_in_train_csv']} studies of the series file are not in train.csv")
    counts["n_problems"] = len(problems)
    return SampleIndex(rows=rows, counts=counts, problems=problems, root=data_dir)


def _typed_rows(records: list[dict]) -> pd.DataFrame:
    rows = pd.DataFrame.from_records(records, columns=list(INDEX_COLUMNS))
    return rows.astype({
        "study_id": "int64", "series_id": "Int64", "instance_number": "Int64",
        "geometry_distance_mm": "float64", "usable": "bool",
    })


def _count(rows: pd.DataFrame, problems: list[str]) -> dict:
    """Counts per rule, grade and status; every excluded row shows up in one of them."""
    labelled = rows.groupby("study_id")["label_status"].apply(lambda status: (status == "ok").any())
    return {
        "n_studies": int(rows["study_id"].nunique()),
        "n_rows": len(rows),
        "n_usable": int(rows["usable"].sum()),
        "rule": {rule: int(n) for rule, n in Counter(rows["rule"]).most_common()},
        "severity": {grade: int((rows["severity"] == grade).sum()) for grade in SEVERITIES},
        "usable_severity": {grade: int((rows["severity"][rows["usable"]] == grade).sum()) for grade in SEVERITIES},
        "label_status": {status: int(n) for status, n in Counter(rows["label_status"]).most_common()},
        "image_status": {status: int(n) for status, n in Counter(rows["image_status"]).most_common()},
        "n_studies_without_canal_labels": int((~labelled).sum()),
        "n_problems": len(problems),
    }


def read_manifest_csv(path: Path) -> SampleIndex:
    """Index a manifest of pre-extracted slices (image_path, study_id, level, severity); paths are CSV-relative."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"{path} is missing.")
    manifest = pd.read_csv(path)
    absent = [column for column in ("image_path", "study_id", "level", "severity") if column not in manifest.columns]
    if absent:
        raise DatasetLayoutError(f"{path} lacks column(s) {', '.join(absent)}.")
    problems: list[str] = []
    records = []
    for row_number, entry in enumerate(manifest.itertuples(index=False), start=1):
        where = f"{path.name} row {row_number} (study {entry.study_id})"
        level = _canonical_level(entry.level)
        if level is None:
            raise DatasetLayoutError(f"{where}: unknown level {entry.level!r}; expected one of {', '.join(LEVELS)}.")
        severity, label_status = _label_status(entry.severity, where, problems)
        present = (path.parent / str(entry.image_path)).is_file()
        if not present:
            problems.append(f"{where}: {entry.image_path} is missing")
        records.append({
            "study_id": int(entry.study_id), "level": level, "severity": severity, "label_status": label_status,
            "series_id": getattr(entry, "series_id", None), "instance_number": getattr(entry, "instance_number", None),
            "rule": "manifest", "geometry_distance_mm": None, "image_path": str(entry.image_path),
            "image_status": "present" if present else "missing_file", "usable": label_status == "ok" and present,
        })
    rows = _typed_rows(records)
    counts = _count(rows, problems)
    counts.update(images_read=True, n_studies_several_axial_t2=0)
    return SampleIndex(rows=rows, counts=counts, problems=problems, root=path.parent)


def write_index(index: SampleIndex, path: Path) -> None:
    """Write the index rows as CSV, atomically."""
    with atomic_path(path) as tmp:
        index.rows.to_csv(tmp, index=False, columns=list(INDEX_COLUMNS))


def format_counts(index: SampleIndex) -> str:
    """Human-readable counts per rule, grade and status (what ``python -m train index`` prints)."""
    counts = index.counts
    lines = [
        f"studies {counts['n_studies']}, rows {counts['n_rows']}, usable {counts['n_usable']}",
        f"studies without canal labels {counts['n_studies_without_canal_labels']}, "
        f"with several Axial T2 series {counts['n_studies_several_axial_t2']}",
        "per rule:",
        *(f"  {rule:<36} {n:>6}" for rule, n in counts["rule"].items()),
        "per grade (all rows / usable rows):",
        *(f"  {grade:<36} {n:>6} / {counts['usable_severity'][grade]}" for grade, n in counts["severity"].items()),
        "per label status:",
        *(f"  {status:<36} {n:>6}" for status, n in counts["label_status"].items()),
        "per image status:",
        *(f"  {status:<36} {n:>6}" for status, n in counts["image_status"].items()),
        f"problems {counts['n_problems']}",
    ]
    return "\n".join(lines)
