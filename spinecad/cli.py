"""``python -m spinecad predict``: grade slices or whole studies from the command line into a Kaggle submission.

    python -m spinecad predict test_images/ --coordinates coords.csv --output predictions.csv
    python -m spinecad predict study.zip another_study/ --output predictions.csv
    python -m spinecad predict slice.dcm --level L4/L5 --output predictions.csv

A study is a zip or a folder of DICOM files; a folder whose sub-folders are studies (Kaggle's ``test_images/``) is
every one of them. Levels are placed from the canal points of a coordinates CSV in the ``train_label_coordinates.csv``
format (``study_id, series_id, instance_number, condition, level, x, y``); a study without points there is placed by
the manifest's localiser when it lists one. A level left unplaced is not graded, and the run says so per study.
The output has one row per graded level: ``row_id,normal_mild,moderate,severe``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from spinecad.atomic import atomic_path
from spinecad.evaluation.scoring import SUBMISSION_COLUMNS
from spinecad.imaging import ImageReadError, read_slice
from spinecad.inference.localizing import load_localizer
from spinecad.inference.manifest import ManifestError
from spinecad.inference.predictor import Predictor
from spinecad.inference.study import Localised, grade_study, localise, place_with_localiser
from spinecad.labels import CONDITION, LEVELS, SEVERITY_COLUMNS, level_index, row_id
from spinecad.study import SagittalPoint, StudyError, read_study

COORDINATE_COLUMNS = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spinecad", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="grade slices or studies into a Kaggle-format CSV")
    predict.add_argument("paths", nargs="+", type=Path, help="slices (with --level), study zips or folders")
    predict.add_argument("--output", type=Path, required=True, help="the predictions CSV to write")
    predict.add_argument("--coordinates", type=Path, help="canal points (train_label_coordinates.csv format)")
    predict.add_argument("--level", help="disc level of every single slice given (e.g. L4/L5)")
    predict.add_argument("--manifest", type=Path, default=Path(os.environ.get("SPINECAD_MANIFEST",
                                                                              "checkpoints/manifest.json")))
    predict.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present)")
    predict.add_argument("--calibrated", action="store_true", help="temperature-scaled probabilities")
    predict.add_argument("--placements", type=Path, help="also write where each level was placed (CSV)")
    args = parser.parse_args(argv)
    try:
        return _predict(args)
    except (StudyError, ManifestError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _predict(args) -> int:
    points = read_coordinates(args.coordinates) if args.coordinates else {}
    slices, studies = _inputs(args.paths)
    if slices and not args.level:
        raise ValueError(f"{len(slices)} single slice(s) given: say their disc level with --level (e.g. L4/L5).")
    level = LEVELS[level_index(args.level)] if args.level else None
    predictor = Predictor.from_manifest(args.manifest, device=args.device)
    if not predictor.models:
        raise ValueError(f"no model of {args.manifest} could be loaded: "
                         + "; ".join(f"{f.name}: {f.reason}" for f in predictor.failures))
    localizer, localizer_problem = load_localizer(predictor.manifest)
    rows, placed, problems = [], [], 0
    for path in tqdm(studies + slices, desc="grading", unit="input", file=sys.stderr):
        try:
            if path in slices:
                prediction = predictor.predict(read_slice(path), calibrated=args.calibrated)
                rows.append(_row(_slice_study_id(path), level, prediction.ensemble[LEVELS.index(level)]))
                continue
            study = read_study([path], study_id=None)
            given = points.get(study.study_id, {})
            # Without points for the study, the manifest's localiser (when it lists one) places the levels.
            localised = localise(localizer, study, problem=localizer_problem) if not given else Localised()
            placements = place_with_localiser(study, given, localised)
            grades = grade_study(predictor, study, placements, calibrated=args.calibrated, profile=False)
        except (StudyError, ImageReadError) as error:
            problems += 1
            tqdm.write(f"{path.name}: not graded: {error}", file=sys.stderr)
            continue
        rows += grades.rows()
        placed += [{"study_id": study.study_id, "level": lv, "series_folder": p.series.folder if p.placed else None,
                    "axial_instance": p.axial_instance, "distance_mm": p.distance_mm, "placed_by": p.placed_by,
                    "confidence": p.confidence, "note": p.note}
                   for lv, p in grades.placements.items()]
        missing = [f"{lv} ({p.note})" for lv, p in grades.placements.items() if lv not in grades.predictions]
        if missing:
            tqdm.write(f"study {study.study_id}: not graded at {'; '.join(missing)}", file=sys.stderr)
    with atomic_path(args.output) as tmp:
        pd.DataFrame(rows, columns=list(SUBMISSION_COLUMNS)).to_csv(tmp, index=False)
    if args.placements:
        with atomic_path(args.placements) as tmp:
            pd.DataFrame(placed, columns=["study_id", "level", "series_folder", "axial_instance", "distance_mm",
                                          "placed_by", "confidence", "note"]).to_csv(tmp, index=False)
    print(f"wrote {len(rows)} rows to {args.output}" + (f"; {problems} input(s) could not be read" if problems else ""))
    return 1 if problems and not rows else 0


def _row(study_id: str, level: str, probs) -> dict:
    return {"row_id": row_id(study_id, level), **dict(zip(SEVERITY_COLUMNS, map(float, probs), strict=True))}


def _slice_study_id(path: Path) -> str:
    """A Kaggle slice (<study>/<series>/<n>.dcm) keeps its study id; any other a number from a hash of its bytes."""
    if path.parent.parent.name.isdigit() and path.parent.name.isdigit():
        return path.parent.parent.name
    return str(int(hashlib.blake2b(path.read_bytes(), digest_size=8).hexdigest(), 16) % 10**10)


def _inputs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(single slices, studies): a folder of study folders (Kaggle's test_images/) counts as each of them."""
    slices, studies = [], []
    for path in paths:
        if not path.exists():
            raise ValueError(f"{path} does not exist.")
        if path.is_dir():
            children = sorted(p for p in path.iterdir() if p.is_dir())
            if children and all(any(q.is_dir() for q in child.iterdir()) for child in children):
                studies += children  # each child holds series folders: a folder of studies
            else:
                studies.append(path)
        elif path.suffix.lower() == ".zip":
            studies.append(path)
        else:
            slices.append(path)
    return slices, studies


def read_coordinates(path: Path) -> dict[str, dict[str, SagittalPoint]]:
    """Study id -> level -> the canal point on its sagittal series, from a train_label_coordinates.csv file."""
    frame = pd.read_csv(path)
    absent = [column for column in COORDINATE_COLUMNS if column not in frame.columns]
    if absent:
        raise ValueError(f"{path} lacks column(s) {', '.join(absent)} (the train_label_coordinates.csv format).")
    condition = frame["condition"].astype(str).str.strip().str.lower().str.replace(" ", "_")
    points: dict[str, dict[str, SagittalPoint]] = {}
    for row in frame[condition == CONDITION].itertuples(index=False):
        try:
            level = LEVELS[level_index(str(row.level))]
        except ValueError:
            continue
        points.setdefault(str(row.study_id), {}).setdefault(level, SagittalPoint(
            sagittal_instance=int(row.instance_number), x=float(row.x), y=float(row.y),
            series_folder=str(row.series_id)))
    return points
