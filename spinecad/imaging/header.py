"""The facts of a DICOM header a study needs to group, order and place its slices, and nothing identifying.

UIDs never leave this module: they become keyed hashes that only say which files belong together. The series
description is reduced to its weighting (T1, T2, STIR); the free text itself is not kept.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from spinecad.imaging.dicom import _int_or_none, _parse
from spinecad.imaging.errors import ImageReadError

_HASH_KEY = b"spinecad-study"  # the hashes name groups within one upload; they are not meant to be reversed


@dataclass(frozen=True)
class SliceHeader:
    """What a study needs of one DICOM file: who it belongs with, where it lies, which number it carries."""

    study_key: str  # keyed hash of StudyInstanceUID ("" when absent)
    series_key: str  # keyed hash of SeriesInstanceUID ("" when absent)
    instance_number: int | None
    series_number: int | None
    weighting: str | None  # "T1", "T2", "STIR", "T2/STIR" or None, from SeriesDescription
    position: tuple[float, ...] | None  # ImagePositionPatient (validated by spinecad.study.geometry)
    orientation: tuple[float, ...] | None  # ImageOrientationPatient
    pixel_spacing: tuple[float, ...] | None
    rows: int
    columns: int
    thickness: float | None


def weighting(description: str | None) -> str | None:
    """T1 / T2 / STIR (or RSNA's "T2/STIR") from a series description; None when it does not say."""
    text = (description or "").upper()
    t2, stir = bool(re.search(r"T2", text)), "STIR" in text or "TIRM" in text
    if t2 and stir:
        return "T2/STIR"
    if stir:
        return "STIR"
    if t2:
        return "T2"
    return "T1" if re.search(r"T1", text) else None


def _key(value: object) -> str:
    return hashlib.blake2b(str(value).encode(), key=_HASH_KEY, digest_size=8).hexdigest() if value else ""


def _values(ds, keyword: str) -> tuple[float, ...] | None:
    """A multi-valued numeric tag as floats; None when absent or malformed."""
    value = ds.get(keyword)
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        return None


def read_header(data: bytes) -> SliceHeader:
    """The study facts of one DICOM file's bytes (ImageReadError when it is not a DICOM image)."""
    ds = _parse(data, force=data[128:132] != b"DICM")
    try:
        thickness = float(ds.get("SliceThickness")) if ds.get("SliceThickness") not in (None, "") else None
    except (TypeError, ValueError):
        thickness = None
    rows, columns = _int_or_none(ds, "Rows"), _int_or_none(ds, "Columns")
    if not rows or not columns:
        raise ImageReadError("The DICOM does not say its image size (Rows, Columns).")
    return SliceHeader(
        study_key=_key(ds.get("StudyInstanceUID")),
        series_key=_key(ds.get("SeriesInstanceUID")),
        instance_number=_int_or_none(ds, "InstanceNumber"),
        series_number=_int_or_none(ds, "SeriesNumber"),
        weighting=weighting(str(ds.get("SeriesDescription", "") or "")),
        position=_values(ds, "ImagePositionPatient"),
        orientation=_values(ds, "ImageOrientationPatient"),
        pixel_spacing=_values(ds, "PixelSpacing"),
        rows=rows,
        columns=columns,
        thickness=thickness,
    )
