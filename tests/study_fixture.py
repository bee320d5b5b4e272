"""Helpers for study tests: a phantom study as a zip, its canal points as a ``levels`` request, its truth."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd

from spinecad.labels import LEVELS


def study_folder(summary, index: int) -> Path:
    return sorted((summary.out_dir / "train_images").iterdir(), key=lambda p: p.name)[index]


def simple_study(summary, skip: int = 0) -> Path:
    """A study with one sagittal and one 15-slice axial series (the phantom varies the others)."""
    simple = [folder for folder in sorted((summary.out_dir / "train_images").iterdir(), key=lambda p: p.name)
              if sorted(len(list(series.glob("*.dcm"))) for series in folder.iterdir())[-1:] == [15]
              and len(list(folder.iterdir())) == 2]
    return simple[skip]


def canal_points(summary, study_id: int) -> dict:
    """The study's canal points (train_label_coordinates.csv) as a /predict_study ``levels`` request."""
    coords = pd.read_csv(summary.out_dir / "train_label_coordinates.csv")
    rows = coords[(coords["study_id"] == study_id) & (coords["condition"] == "Spinal Canal Stenosis")]
    return {row.level: {"sagittal_instance": int(row.instance_number), "x": float(row.x), "y": float(row.y)}
            for row in rows.itertuples()}


def truth(summary, study_id: int) -> dict[str, set[tuple[int, int]]]:
    """Level -> every (axial series, instance) the phantom drew that level's disc on."""
    rows = summary.truth[summary.truth["study_id"] == study_id]
    found: dict[str, set[tuple[int, int]]] = {level: set() for level in LEVELS}
    for row in rows.itertuples():
        found[row.level].add((int(row.series_id), int(row.instance_number)))
    return found


def zip_study(folder: Path, *, names=None) -> bytes:
    """The study folder as zip bytes; ``names`` maps a file to the name it gets inside (default: Kaggle layout)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*.dcm")):
            name = names(path) if names else str(path.relative_to(folder.parent))
            archive.writestr(name, path.read_bytes())
    return buffer.getvalue()


def zip_members(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """Zip bytes holding ``members`` (name -> bytes) under exactly those names, however hostile."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_bomb(members: int = 3, megabytes: int = 350) -> bytes:
    """A zip bomb: about 1 MB on disk per ~1 GB it inflates to (zeros, streamed, so it is never held whole)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for k in range(members):
            with archive.open(f"bomb{k}.dcm", "w", force_zip64=True) as member:
                for _ in range(megabytes):
                    member.write(bytes(2**20))
    return buffer.getvalue()
