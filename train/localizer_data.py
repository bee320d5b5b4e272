"""The localiser's labels and samples: canal points on a sagittal series per study, from the Kaggle CSVs.

Label preparation reads only ``train_label_coordinates.csv`` and ``train_series_descriptions.csv`` (images are not
needed to count): per study, the sagittal series that holds its spinal canal points (Sagittal T2/STIR preferred, as
the sample index prefers it) and the five points on it. Samples add what the images' headers say: where the
labelled slice lies (``spinecad.study.geometry``), its size and pixel spacing, and the study's axial slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError

from spinecad.labels import CONDITION, LEVELS
from spinecad.study.geometry import GeometryError, Plane
from train.rsna import AXIAL_T2, IMAGES_DIR, SAGITTAL_T2, DatasetLayoutError, _canonical_level

COORDINATES, DESCRIPTIONS = "train_label_coordinates.csv", "train_series_descriptions.csv"
_HEADER_TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
                "SliceThickness", "InstanceNumber"]


@dataclass(frozen=True)
class CanalLabels:
    """One row per labelled (study, level): the sagittal series, instance and (x, y) pixel point; and counts."""

    points: pd.DataFrame  # study_id, series_id, series_description, instance_number, level, x, y
    counts: dict  # studies with all five / some / none of the canal points on a sagittal series, and more


def _read(data_dir: Path, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
    path = Path(data_dir) / name
    if not path.is_file():
        raise DatasetLayoutError(f"{path} is missing; the localiser's labels are the canal points of {COORDINATES}.")
    frame = pd.read_csv(path)
    absent = [column for column in columns if column not in frame.columns]
    if absent:
        raise DatasetLayoutError(f"{path} lacks column(s) {', '.join(absent)}.")
    return frame


def canal_labels(data_dir: Path) -> CanalLabels:
    """The canal points per study on one sagittal series, and how many studies have all five, some or none."""
    coords = _read(data_dir, COORDINATES, ("study_id", "series_id", "instance_number", "condition", "level", "x", "y"))
    series = _read(data_dir, DESCRIPTIONS, ("study_id", "series_id", "series_description"))
    # Kaggle spells the condition "Spinal Canal Stenosis" and the level "L4/L5"; corrected copies "l4_l5".
    condition = coords["condition"].astype(str).str.strip().str.lower().str.replace(" ", "_")
    canal = coords[condition == CONDITION].assign(level=lambda frame: frame["level"].map(_canonical_level))
    canal = canal[canal["level"].notna()].merge(series, on=["study_id", "series_id"], how="left")
    sagittal = canal[canal["series_description"].fillna("").str.startswith("Sagittal")].copy()
    # One series per study: the one with the most points, Sagittal T2/STIR first on a tie.
    sagittal["t2"] = sagittal["series_description"] == SAGITTAL_T2
    ranked = (sagittal.groupby(["study_id", "series_id"]).agg(n=("level", "nunique"), t2=("t2", "first"))
              .reset_index().sort_values(["study_id", "n", "t2"], ascending=[True, False, False]))
    chosen = ranked.drop_duplicates("study_id")[["study_id", "series_id"]]
    points = (sagittal.merge(chosen, on=["study_id", "series_id"])
              .drop_duplicates(["study_id", "level"])  # a level labelled twice keeps its first point
              [["study_id", "series_id", "series_description", "instance_number", "level", "x", "y"]]
              .astype({"study_id": "int64", "series_id": "int64", "instance_number": "int64"})
              .sort_values(["study_id", "level"]).reset_index(drop=True))
    studies = set(series["study_id"].astype(int))
    per_study = points.groupby("study_id")["level"].nunique()
    modal = points.groupby("study_id")["instance_number"].agg(lambda values: values.mode().min())
    offset = (points["instance_number"] - points["study_id"].map(modal)).abs()
    counts = {
        "n_studies": len(studies),
        "all_five": int((per_study == len(LEVELS)).sum()),
        "some": int(((per_study > 0) & (per_study < len(LEVELS))).sum()),
        "none": len(studies - set(per_study.index)),
        "on_sagittal_t1": int(points.loc[points["series_description"] != SAGITTAL_T2, "study_id"].nunique()),
        "canal_points_off_sagittal": int(len(canal) - len(sagittal)),
        "n_points": len(points),
        # The slice a single-slice localiser would run on: how often one slice holds every level's labelled point.
        "levels_on_modal_instance": float((offset == 0).mean()) if len(points) else float("nan"),
        "levels_within_one_of_modal": float((offset <= 1).mean()) if len(points) else float("nan"),
        "studies_one_instance": int((points.groupby("study_id")["instance_number"].nunique() == 1).sum()),
        "labelled_instance_median": float(points["instance_number"].median()) if len(points) else float("nan"),
    }
    return CanalLabels(points, counts)


def format_label_counts(labels: CanalLabels) -> str:
    """What ``python -m train localizer --labels-only`` prints."""
    c = labels.counts
    return "\n".join([
        f"studies {c['n_studies']}: all five canal points on a sagittal series {c['all_five']}, some {c['some']}, "
        f"none {c['none']}",
        f"  points used {c['n_points']}; studies whose points lie on Sagittal T1 {c['on_sagittal_t1']}; "
        f"canal points on a non-sagittal series ignored {c['canal_points_off_sagittal']}",
        f"  levels on their study's most used instance {100 * c['levels_on_modal_instance']:.1f}%, within one "
        f"{100 * c['levels_within_one_of_modal']:.1f}%; studies with one instance for all levels "
        f"{c['studies_one_instance']}; median labelled instance number {c['labelled_instance_median']:g}",
    ])


# ---- Samples: the labels with what the images' headers say ----------------------------------------------------

@dataclass
class StudySample:
    """One study's labelled sagittal slice, its points (NaN where a level has none) and where things lie."""

    study_id: int
    file: Path  # the labelled instance (the one most of its levels were marked on)
    points: np.ndarray  # (5, 2) x, y in pixels of that slice
    plane: Plane
    sagittal: list[tuple[int, Plane]] = field(default_factory=list)  # (instance, plane) ordered right to left
    axial: list[tuple[int, int, Plane]] = field(default_factory=list)  # (series, instance, plane) of Axial T2

    @property
    def instance(self) -> int:
        return int(self.file.stem)


def read_plane(path: Path) -> Plane | None:
    """The slice's place in space from its header; None when the file or its geometry cannot be read."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        return Plane.from_header(header.ImagePositionPatient, header.ImageOrientationPatient, header.PixelSpacing,
                                 header.Rows, header.Columns, header.get("SliceThickness"))
    except (OSError, InvalidDicomError, AttributeError, GeometryError):
        return None


def _series_planes(folder: Path) -> list[tuple[int, Plane]]:
    planes = [(int(path.stem), read_plane(path)) for path in folder.glob("*.dcm") if path.stem.isdigit()]
    return sorted(((n, p) for n, p in planes if p is not None), key=lambda item: item[0])


def study_samples(data_dir: Path, labels: CanalLabels, studies: set[int] | None = None) -> tuple[list, list[str]]:
    """A StudySample per labelled study with a readable labelled slice; problems (in words) for the others."""
    data_dir = Path(data_dir)
    series = pd.read_csv(data_dir / DESCRIPTIONS)
    axial_by_study = series[series["series_description"] == AXIAL_T2].groupby("study_id")["series_id"].apply(sorted)
    samples, problems = [], []
    for study_id, rows in labels.points.groupby("study_id"):
        if studies is not None and int(study_id) not in studies:
            continue
        instance = int(rows["instance_number"].mode().min())
        folder = data_dir / IMAGES_DIR / str(study_id) / str(int(rows["series_id"].iloc[0]))
        file = folder / f"{instance}.dcm"
        plane = read_plane(file)
        if plane is None:
            problems.append(f"study {study_id}: labelled sagittal slice {file.name} missing or without geometry")
            continue
        points = np.full((len(LEVELS), 2), np.nan)
        for level, x, y in rows[["level", "x", "y"]].itertuples(index=False):
            points[LEVELS.index(level)] = (x, y)
        # Right to left (increasing patient x), the order spinecad.study lists a sagittal series in.
        sagittal = sorted(_series_planes(folder), key=lambda item: float(item[1].origin[0]))
        axial = [(int(s), n, p) for s in axial_by_study.get(study_id, [])
                 for n, p in _series_planes(data_dir / IMAGES_DIR / str(study_id) / str(s))]
        samples.append(StudySample(int(study_id), file, points, plane, sagittal, axial))
    return samples, problems
