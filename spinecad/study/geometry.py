"""Where a slice lies in patient space, and which slice of a series a point falls on.

DICOM's patient coordinates (LPS, mm) come from three header values: ImagePositionPatient (the centre of the first
pixel), ImageOrientationPatient (the direction cosines of a row, then of a column) and PixelSpacing, which gives the
spacing *between rows* first and *between columns* second, so a step along a row (the next column, x) is
``PixelSpacing[1]`` and a step down a column (the next row, y) is ``PixelSpacing[0]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PLANES = ("sagittal", "coronal", "axial")  # the plane whose normal is the patient x, y or z axis
# A slice this far off the main plane (degrees) is called oblique.
OBLIQUE_DEGREES = 30.0
# The training index leaves a level unplaced beyond this distance: the axial stack does not cover the disc.
MAX_DISTANCE_MM = 10.0


class GeometryError(ValueError):
    """Header values that do not describe a slice in space (absent, malformed, not unit and orthogonal)."""


@dataclass(frozen=True)
class Plane:
    """Patient-space geometry of one slice: first-pixel centre, row/column directions, spacing and size."""

    origin: np.ndarray
    row_dir: np.ndarray  # direction of increasing column index (x)
    col_dir: np.ndarray  # direction of increasing row index (y)
    spacing: tuple[float, float]  # (between rows, between columns), as PixelSpacing orders them
    shape: tuple[int, int]  # (rows, columns)
    thickness: float | None = None

    @classmethod
    def from_header(cls, position, orientation, pixel_spacing, rows, columns, thickness=None) -> Plane:
        """Build from ImagePositionPatient, ImageOrientationPatient, PixelSpacing, Rows, Columns (GeometryError)."""
        try:
            origin = np.array([float(v) for v in position], dtype=float)
            cosines = np.array([float(v) for v in orientation], dtype=float)
            spacing = tuple(float(v) for v in pixel_spacing)
            shape = (int(rows), int(columns))
            thick = None if thickness in (None, "") else float(thickness)
        except (TypeError, ValueError) as error:
            raise GeometryError(f"malformed geometry tags ({type(error).__name__})") from None
        if origin.shape != (3,) or cosines.shape != (6,) or len(spacing) != 2:
            raise GeometryError("geometry tags have the wrong number of values")
        if not (np.isfinite(origin).all() and np.isfinite(cosines).all() and all(np.isfinite(spacing))):
            raise GeometryError("geometry tags are not finite")
        row_dir, col_dir = cosines[:3], cosines[3:]
        norms = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
        if min(norms) < 1e-3 or abs(float(np.dot(row_dir, col_dir))) > 1e-2 * norms[0] * norms[1]:
            raise GeometryError("ImageOrientationPatient is not two orthogonal directions")
        if min(spacing) <= 0 or min(shape) <= 0:
            raise GeometryError("PixelSpacing and the image size must be positive")
        return cls(origin, row_dir / norms[0], col_dir / norms[1], spacing, shape, thick)  # type: ignore[arg-type]

    @property
    def normal(self) -> np.ndarray:
        """Unit normal (row x column direction)."""
        return np.cross(self.row_dir, self.col_dir)

    @property
    def centre(self) -> np.ndarray:
        """Patient coordinates of the image centre."""
        return self.to_patient((self.shape[1] - 1) / 2, (self.shape[0] - 1) / 2)

    @property
    def orientation(self) -> str:
        """``axial``, ``sagittal`` or ``coronal`` by the nearest patient axis, ``oblique`` beyond 30 degrees."""
        normal = np.abs(self.normal)
        axis = int(np.argmax(normal))
        if np.degrees(np.arccos(min(1.0, float(normal[axis])))) > OBLIQUE_DEGREES:
            return "oblique"
        return PLANES[axis]

    def to_patient(self, x: float, y: float) -> np.ndarray:
        """Patient coordinates (mm) of pixel column ``x``, row ``y``."""
        return self.origin + x * self.spacing[1] * self.row_dir + y * self.spacing[0] * self.col_dir

    def to_pixel(self, point: np.ndarray) -> tuple[float, float]:
        """(column x, row y) of the point's projection onto the plane."""
        offset = np.asarray(point, dtype=float) - self.origin
        x = float(np.dot(offset, self.row_dir)) / self.spacing[1]
        return x, float(np.dot(offset, self.col_dir)) / self.spacing[0]

    def signed_distance(self, point: np.ndarray) -> float:
        """Distance (mm) from the plane to ``point``, positive on the side the normal points to."""
        return float(np.dot(self.normal, np.asarray(point, dtype=float) - self.origin))

    def contains(self, point: np.ndarray) -> bool:
        """Whether the point's projection falls inside the image."""
        x, y = self.to_pixel(point)
        return -0.5 <= x <= self.shape[1] - 0.5 and -0.5 <= y <= self.shape[0] - 0.5


@dataclass(frozen=True)
class Nearest:
    """The slice of a series nearest a point: its index in the given sequence and its distance (mm)."""

    index: int
    distance_mm: float
    inside: bool  # the point projects inside that slice's image


def nearest_slice(planes: Sequence[Plane | None], point: np.ndarray) -> Nearest | None:
    """The plane nearest ``point``, preferring those whose image holds its projection; None without planes."""
    candidates = [
        (not plane.contains(point), abs(plane.signed_distance(point)), index)
        for index, plane in enumerate(planes) if plane is not None
    ]
    if not candidates:
        return None
    outside, distance, index = min(candidates)
    return Nearest(index, distance, not outside)


def slab_mm(planes: Sequence[Plane]) -> float:
    """How far from its nearest slice a point may lie and still be in the series: one slice's thickness, or the
    median gap between neighbouring slices when that is wider (slices with gaps between them)."""
    thickness = max((p.thickness for p in planes if p.thickness), default=0.0)
    if len(planes) < 2:
        return thickness or MAX_DISTANCE_MM
    normal = planes[0].normal
    positions = np.sort([float(np.dot(normal, p.origin)) for p in planes])
    gaps = np.diff(positions)
    gaps = gaps[gaps > 1e-3]
    gap = float(np.median(gaps)) if gaps.size else 0.0
    return max(thickness, gap) or MAX_DISTANCE_MM
