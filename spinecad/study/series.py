"""A study from an upload: its DICOM files grouped into series, each described and ordered along its normal."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from spinecad.imaging import ImageReadError, Slice, read_slice
from spinecad.imaging.header import SliceHeader, read_header
from spinecad.study.archive import Member, StudyError, gather
from spinecad.study.geometry import GeometryError, Plane, slab_mm

PARALLEL_DEGREES = 2.0  # slices whose normals differ by more are separate stacks of one series
SAME_POSITION_MM = 0.01
# Slices are listed head to feet (axial), right to left (sagittal), front to back (coronal): LPS axes.
_READING_DIRECTION = {"axial": (0.0, 0.0, -1.0), "sagittal": (1.0, 0.0, 0.0), "coronal": (0.0, 1.0, 0.0)}
_KAGGLE_NAME = re.compile(r"(?:^|/)(?P<study>\d+)/(?P<series>\d+)/(?P<instance>\d+)\.dcm$")


@dataclass(frozen=True)
class StudySlice:
    """One slice of a series: its file's bytes (decoded only when asked), header facts and place in space."""

    member: Member
    header: SliceHeader
    plane: Plane | None
    position_mm: float | None  # along the series' normal

    @property
    def instance_number(self) -> int | None:
        return self.header.instance_number

    def read(self) -> Slice:
        """The slice's pixels as the models see them (ImageReadError if they cannot be decoded)."""
        return read_slice(self.member.data)


@dataclass
class Series:
    """One series of a study: slices ordered by position along the normal, and what is wrong with its geometry."""

    key: str  # keyed hash of SeriesInstanceUID: tells series apart, identifies nothing
    number: int | None
    plane: str  # "axial", "sagittal", "coronal", "oblique" or "unknown"
    weighting: str | None
    slices: list[StudySlice]
    problems: list[str] = field(default_factory=list)

    @property
    def planes(self) -> list[Plane | None]:
        return [s.plane for s in self.slices]

    @property
    def slab_mm(self) -> float:
        return slab_mm([p for p in self.planes if p is not None])

    @property
    def label(self) -> str:
        """E.g. "Sagittal T2/STIR, 17 slices"; no free text from the header."""
        kind = " ".join(part for part in (self.plane.capitalize(), self.weighting) if part)
        return f"{kind}, {len(self.slices)} slice{'s' * (len(self.slices) != 1)}"

    @property
    def folder(self) -> str | None:
        """The folder holding the series' files when they all share one (a Kaggle layout names it by series)."""
        folders = {s.member.name.replace("\\", "/").rpartition("/")[0].rpartition("/")[2] for s in self.slices}
        return folders.pop() if len(folders) == 1 else None

    def index_of(self, instance_number: int) -> int | None:
        """Position in ``slices`` of the slice with that InstanceNumber (the first, if repeated)."""
        return next((i for i, s in enumerate(self.slices) if s.instance_number == instance_number), None)

    def describe(self) -> dict:
        """The JSON description (no UIDs, no header text)."""
        return {"plane": self.plane, "weighting": self.weighting, "slices": len(self.slices),
                "series_number": self.number, "problems": list(self.problems)}


@dataclass
class Study:
    """Every series of one study, a study id safe to show, and what was skipped or is wrong."""

    study_id: str
    series: list[Series]
    skipped: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def find(self, plane: str, weightings: tuple[str | None, ...]) -> Series | None:
        """The series of that plane whose weighting comes first in ``weightings`` (then the most slices)."""
        ranked = [(weightings.index(s.weighting), -len(s.slices), i) for i, s in enumerate(self.series)
                  if s.plane == plane and s.weighting in weightings]
        return self.series[min(ranked)[2]] if ranked else None

    @property
    def axial(self) -> Series | None:
        """The axial T2 series the grades come from (an axial series of unknown weighting if none says T2)."""
        return self.find("axial", ("T2", "T2/STIR", None))

    @property
    def sagittal(self) -> Series | None:
        """The sagittal T2 (or STIR) series the disc levels are pointed on."""
        return self.find("sagittal", ("T2/STIR", "T2", "STIR", None, "T1"))

    def describe(self) -> list[dict]:
        return [series.describe() for series in self.series]


def read_study(sources: Iterable[str | os.PathLike | bytes | Member], *, study_id: str | None = None) -> Study:
    """Read a study from zips, folders or files (StudyError when it is not one readable study)."""
    gathered = gather(sources)
    skipped = Counter(gathered.skipped)
    headers: list[tuple[Member, SliceHeader]] = []
    for member in gathered.members:
        try:
            headers.append((member, read_header(member.data)))
        except ImageReadError:
            skipped["not a DICOM image"] += 1
    if not headers:
        reasons = ", ".join(f"{n} {why}" for why, n in skipped.items())
        raise StudyError(f"The upload holds no DICOM images ({reasons}).")
    studies = {header.study_key for _, header in headers}
    if len(studies) > 1:
        raise StudyError(f"The upload mixes {len(studies)} studies (different StudyInstanceUIDs); "
                         "upload one study at a time.")
    groups: dict[str, list[tuple[Member, SliceHeader]]] = {}
    for member, header in headers:
        groups.setdefault(header.series_key, []).append((member, header))
    series = [_series(key, group) for key, group in groups.items()]
    series.sort(key=lambda s: (s.number is None, s.number or 0, s.plane))
    return Study(study_id or _study_id(headers), series, skipped)


def _study_id(headers: list[tuple[Member, SliceHeader]]) -> str:
    """The Kaggle folder name when every file sits at <study>/<series>/<instance>.dcm, else a number from a hash."""
    found = {match["study"] for member, _ in headers if (match := _KAGGLE_NAME.search(member.name.replace("\\", "/")))}
    if len(found) == 1 and all(_KAGGLE_NAME.search(m.name.replace("\\", "/")) for m, _ in headers):
        return found.pop()
    return str(int(headers[0][1].study_key or "0", 16) % 10**10)


def _series(key: str, group: list[tuple[Member, SliceHeader]]) -> Series:
    problems: list[str] = []
    planes: list[Plane | None] = []
    for _, header in group:
        try:
            planes.append(Plane.from_header(header.position, header.orientation, header.pixel_spacing,
                                            header.rows, header.columns, header.thickness))
        except GeometryError:
            planes.append(None)
    missing = sum(plane is None for plane in planes)
    if missing:
        problems.append(f"{missing} slice(s) lack usable position or orientation tags: they cannot be placed.")
    placed = [plane for plane in planes if plane is not None]
    plane_name = Counter(p.orientation for p in placed).most_common(1)[0][0] if placed else "unknown"
    normal = placed[0].normal if placed else None
    if normal is not None and float(np.dot(normal, _READING_DIRECTION.get(plane_name, normal))) < 0:
        normal = -normal
    slices = [
        StudySlice(member, header, plane, None if plane is None else float(np.dot(normal, plane.origin)))
        for (member, header), plane in zip(group, planes, strict=True)
    ]
    slices.sort(key=lambda s: (s.position_mm is None, s.position_mm or 0.0, s.instance_number or 0))
    if placed:
        angles = [np.degrees(np.arccos(min(1.0, abs(float(np.dot(normal, p.normal)))))) for p in placed]
        if max(angles) > PARALLEL_DEGREES:
            problems.append(f"The slices are not parallel (normals up to {max(angles):.0f} degrees apart): several "
                            "stacks in one series; each slice is placed by its own plane.")
        duplicated = _duplicated_positions(slices)
        if duplicated:
            problems.append(f"{duplicated} slice(s) repeat another slice's position: the series may hold two "
                            "acquisitions; slices at one position are kept in InstanceNumber order.")
    numbers = [s.instance_number for s in slices if s.instance_number is not None]
    if len(numbers) != len(set(numbers)):
        problems.append("InstanceNumbers repeat within the series: a slice chosen by number takes the first.")
    weightings = Counter(header.weighting for _, header in group)
    return Series(key, group[0][1].series_number, plane_name, weightings.most_common(1)[0][0], slices, problems)


def _duplicated_positions(slices: list[StudySlice]) -> int:
    """Slices at the same place (origin within 0.01 mm) as an earlier slice of the list."""
    origins = [s.plane.origin for s in slices if s.plane is not None]
    return sum(any(np.linalg.norm(origin - other) < SAME_POSITION_MM for other in origins[:i])
               for i, origin in enumerate(origins))
