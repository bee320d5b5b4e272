"""Which axial slice each disc level is graded on: from a point on the sagittal series, or chosen by hand.

A request per level is either ``{"sagittal_instance": N, "x": px, "y": px}`` (a point on the study's sagittal
series, in the pixels of that slice, as train_label_coordinates.csv gives them) or ``{"axial_instance": N}``.
Instance numbers are the headers' InstanceNumber, never file names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from spinecad.labels import LEVELS, level_index
from spinecad.study.archive import StudyError
from spinecad.study.geometry import nearest_slice
from spinecad.study.series import Series, Study


class SagittalPoint(BaseModel):
    """A disc level pointed on a sagittal slice (pixel column x, row y)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    sagittal_instance: int
    x: float
    y: float
    placed_by: str = "user"
    confidence: float | None = None
    series_folder: str | None = None  # Kaggle layout: the sagittal series' folder, where instance numbers repeat

    @field_validator("x", "y")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number of pixels")
        return value


class AxialChoice(BaseModel):
    """A disc level given as the axial slice to grade."""

    model_config = ConfigDict(extra="forbid", strict=True)
    axial_instance: int


LevelRequest = SagittalPoint | AxialChoice


@dataclass(frozen=True)
class Placement:
    """Where a level is graded: an axial series and slice, or why it is not (``note``)."""

    level: str
    series: Series | None = None
    index: int | None = None  # into series.slices
    distance_mm: float | None = None  # from the sagittal point to the slice plane
    placed_by: str | None = None  # "user" or "localiser"
    confidence: float | None = None  # the localiser's, for its points
    note: str = ""

    @property
    def placed(self) -> bool:
        return self.series is not None and self.index is not None

    @property
    def axial_instance(self) -> int | None:
        return self.series.slices[self.index].instance_number if self.placed else None


def parse_levels(value: str | dict | None) -> dict[str, LevelRequest]:
    """Level name ("L4/L5" or "l4_l5") -> request, from JSON text or a dict; StudyError says what is wrong."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise StudyError(f"levels is not valid JSON ({error.msg} at character {error.pos}).") from None
    if not isinstance(value, dict):
        raise StudyError('levels must be a JSON object such as {"L4/L5": {"axial_instance": 7}}.')
    requests: dict[str, LevelRequest] = {}
    for name, spec in value.items():
        try:
            level = LEVELS[level_index(str(name))]
        except ValueError as error:
            raise StudyError(str(error)) from None
        kind = AxialChoice if isinstance(spec, dict) and "axial_instance" in spec else SagittalPoint
        try:
            requests[level] = kind.model_validate(spec)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "value"
            raise StudyError(f'levels["{level}"].{where}: {first["msg"]}. Give {{"sagittal_instance": N, '
                             f'"x": px, "y": px}} or {{"axial_instance": N}}.') from None
    return requests


def place_levels(study: Study, requests: dict[str, LevelRequest]) -> dict[str, Placement]:
    """A placement for every level; a level without a request, or whose point no axial slice covers, is unplaced."""
    return {level: _place(study, level, requests.get(level)) for level in LEVELS}


def _axial_series(study: Study) -> list[Series]:
    primary = study.axial
    return ([primary] if primary else []) + [s for s in study.series if s.plane == "axial" and s is not primary]


def _place(study: Study, level: str, request: LevelRequest | None) -> Placement:
    axial = _axial_series(study)
    if request is None:
        return Placement(level, note="no point or slice was given for this level")
    if not axial:
        return Placement(level, note="the study has no axial series to grade")
    if isinstance(request, AxialChoice):
        for series in axial:
            index = series.index_of(request.axial_instance)
            if index is not None:
                return Placement(level, series, index, placed_by="user")
        return Placement(level, note=f"no axial slice has InstanceNumber {request.axial_instance}")
    return _place_point(study, level, request, axial)


def _place_point(study: Study, level: str, request: SagittalPoint, axial: list[Series]) -> Placement:
    sagittal = [s for s in ([study.sagittal] if study.sagittal else []) + study.series if s.plane == "sagittal"]
    if request.series_folder is not None:
        sagittal = [s for s in sagittal if s.folder == request.series_folder]
    found = next(((s, i) for s in sagittal if (i := s.index_of(request.sagittal_instance)) is not None), None)
    unplaced = {"placed_by": request.placed_by, "confidence": request.confidence}
    if found is None:
        return Placement(level, note=f"no sagittal slice has InstanceNumber {request.sagittal_instance}", **unplaced)
    series, index = found
    plane = series.slices[index].plane
    if plane is None:
        return Placement(level, note="the sagittal slice has no usable position tags", **unplaced)
    rows, columns = plane.shape
    if not (-0.5 <= request.x <= columns - 0.5 and -0.5 <= request.y <= rows - 0.5):
        return Placement(level, note=f"the point ({request.x:g}, {request.y:g}) is outside the {columns} x {rows} "
                                     "sagittal image", **unplaced)
    point = plane.to_patient(request.x, request.y)
    slices = [(s, i) for s in axial for i in range(len(s.slices))]
    nearest = nearest_slice([s.slices[i].plane for s, i in slices], point)
    if nearest is None:
        return Placement(level, note="no axial slice has usable position tags", **unplaced)
    chosen, chosen_index = slices[nearest.index]
    slab = chosen.slab_mm
    if nearest.distance_mm > slab or not nearest.inside:
        where = "outside every axial image" if not nearest.inside else f"{nearest.distance_mm:.1f} mm from the nearest"
        return Placement(level, distance_mm=round(nearest.distance_mm, 2),
                         note=f"the point lies {where} axial slice (the series covers {slab:g} mm around each "
                              "slice): the axial series does not reach this level", **unplaced)
    return Placement(level, chosen, chosen_index, round(nearest.distance_mm, 2), **unplaced)
