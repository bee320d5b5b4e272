"""Grade a whole study: every slice of its axial series once per backbone, each placed level from its slice.

The result holds, per level, the chosen slice's six-model probabilities and their ensemble, and, for the axial
series, the ensemble's probabilities at every level for every slice (the stenosis profile along the stack).
``explain_study`` gives every model's heatmap at each placed level, all levels in one batched pass per model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from spinecad.imaging import ImageReadError, Slice
from spinecad.inference.heatmaps import Heatmap, explain_slices
from spinecad.inference.loading import LoadedModel
from spinecad.inference.localizing import Localizer, LocalizerInputError
from spinecad.inference.predictor import Prediction, Predictor
from spinecad.labels import LEVELS, SEVERITY_COLUMNS, row_id
from spinecad.study import LevelRequest, Placement, SagittalPoint, Series, Study, place_levels


@dataclass
class StudyGrades:
    """Per-level grades of one study and the profile of its axial series."""

    study: Study
    placements: dict[str, Placement]
    predictions: dict[str, Prediction]  # placed and graded levels only
    profile: np.ndarray | None  # (slices, levels, grades): the ensemble on every readable axial slice
    profile_instances: list[int | None] = field(default_factory=list)
    profile_positions_mm: list[float | None] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    calibrated: bool = False

    def rows(self) -> list[dict]:
        """Kaggle-format rows (row_id, normal_mild, moderate, severe) of the graded levels."""
        return [{"row_id": row_id(self.study.study_id, level),
                 **{column: float(p) for column, p in zip(SEVERITY_COLUMNS, prediction.ensemble[i], strict=True)}}
                for i, level in enumerate(LEVELS) if (prediction := self.predictions.get(level)) is not None]

    def to_dict(self) -> dict:
        """The JSON of the app's ``predict_study`` API (no UIDs, no header text)."""
        levels = {}
        for level in LEVELS:
            placement = self.placements[level]
            entry = {
                "axial_instance": placement.axial_instance, "distance_mm": placement.distance_mm,
                "placed_by": placement.placed_by if placement.placed else None,
                "confidence": placement.confidence, "note": placement.note,
                "models": None, "ensemble": None,
            }
            prediction = self.predictions.get(level)
            if prediction is not None:
                answer = prediction.to_dict(level)
                entry.update(row_id=row_id(self.study.study_id, level), models=answer["models"],
                             ensemble=answer["ensemble"], unfamiliar=answer["unfamiliar"],
                             models_split=answer["models_split"])
            levels[level] = entry
        axial, sagittal = self.study.axial, self.study.sagittal
        return {
            "study_id": self.study.study_id,
            "series": self.study.describe(),
            "axial_series": _index(self.study, axial),
            "sagittal_series": _index(self.study, sagittal),
            "levels": levels,
            "rows": [{key: round(value, 6) if isinstance(value, float) else value for key, value in row.items()}
                     for row in self.rows()],
            "profile": None if self.profile is None else {
                "instances": self.profile_instances, "positions_mm": self.profile_positions_mm,
                "levels": list(LEVELS), "ensemble": np.round(self.profile, 5).tolist(),
            },
            "calibrated": self.calibrated,
            "warnings": list(self.warnings),
        }


def _index(study: Study, series: Series | None) -> int | None:
    return next((i for i, s in enumerate(study.series) if s is series), None)


def study_warnings(study: Study) -> list[str]:
    """What a reader of the grades should know about the upload: skipped files, geometry, missing series."""
    warnings = [f"{n} file(s) skipped: {why}." for why, n in study.skipped.items()]
    warnings += list(study.problems)
    for series in study.series:
        warnings += [f"{series.label}: {problem}" for problem in series.problems]
    if study.axial is None:
        warnings.append("The study has no axial series: there is nothing to grade (the models read axial T2 slices).")
    elif study.axial.weighting not in ("T2", "T2/STIR"):
        warnings.append(f"The axial series does not say it is T2 ({study.axial.label}); the models read axial T2.")
    if study.sagittal is None:
        warnings.append("The study has no sagittal series: levels can only be placed by choosing axial slices.")
    return warnings


@dataclass
class Localised:
    """The localiser's points on a study's sagittal series as level requests, and what it could not place."""

    requests: dict[str, SagittalPoint] = field(default_factory=dict)
    sagittal_instance: int | None = None  # the slice it ran on
    notes: dict[str, str] = field(default_factory=dict)  # level -> why it was left unplaced
    problem: str = ""  # why it did not run at all


def localise(localizer: Localizer | None, study: Study, *, problem: str = "") -> Localised:
    """Place the levels on the study's sagittal series with the localiser; a level below its confidence
    threshold is left unplaced (the user clicks it), never guessed."""
    if localizer is None:
        return Localised(problem=problem)
    series = study.sagittal
    try:
        if series is None:
            raise LocalizerInputError("The study has no sagittal series, so the levels cannot be placed by "
                                      "themselves: choose each level's axial slice.")
        stack = [s.read().pixels for s in series.slices]
        index = localizer.choose_slice(stack)
        points = localizer.predict(stack[index])
    except (LocalizerInputError, ImageReadError) as error:
        return Localised(problem=str(error))
    chosen = series.slices[index]
    found = Localised(sagittal_instance=chosen.instance_number)
    for point in points:
        if point.confidence >= localizer.min_confidence:
            found.requests[point.level] = SagittalPoint(
                sagittal_instance=chosen.instance_number, x=round(point.x, 2), y=round(point.y, 2),
                placed_by="localiser", confidence=round(point.confidence, 4))
        else:
            found.notes[point.level] = (f"the localiser's confidence ({point.confidence:.2f}) is below its threshold "
                                        f"({localizer.min_confidence:.2f}): click this level")
    return found


def place_with_localiser(study: Study, requests: dict[str, LevelRequest], localised: Localised) -> dict[str, Placement]:
    """Placements from the user's requests and, for the levels the user left alone, the localiser's points; a level
    neither placed says why (the localiser's own reason when it declined it)."""
    placements = place_levels(study, {**localised.requests, **requests})
    for level, placement in placements.items():
        if not placement.placed and level not in requests and level not in localised.requests:
            note = localised.notes.get(level) or localised.problem or placement.note
            placements[level] = replace(placement, note=note)
    return placements


def grade_study(
    predictor: Predictor,
    study: Study,
    placements: dict[str, Placement],
    *,
    calibrated: bool = False,
    profile: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> StudyGrades:
    """Grade the placed levels (and, with ``profile``, every slice of the axial series) in batched passes."""
    warnings = study_warnings(study)
    wanted: list[tuple[Series, int]] = []
    if profile and study.axial is not None:
        wanted += [(study.axial, i) for i in range(len(study.axial.slices))]
    for placement in placements.values():
        if placement.placed and (placement.series, placement.index) not in wanted:
            wanted.append((placement.series, placement.index))
    images: list[Slice] = []
    readable: list[tuple[Series, int]] = []
    unreadable = 0
    for series, index in wanted:
        try:
            images.append(series.slices[index].read())
            readable.append((series, index))
        except ImageReadError:
            unreadable += 1
    if unreadable:
        warnings.append(f"{unreadable} axial slice(s) could not be decoded and were left out.")
    results = predictor.predict_series(images, calibrated=calibrated, progress=progress) if images else []
    by_slice = {(id(series), index): prediction for (series, index), prediction in zip(readable, results, strict=True)}
    predictions = {}
    for level, placement in placements.items():
        if placement.placed:
            prediction = by_slice.get((id(placement.series), placement.index))
            if prediction is None:
                warnings.append(f"{level}: its axial slice could not be decoded, so it is not graded.")
            else:
                predictions[level] = prediction
        elif placement.note:
            warnings.append(f"{level} not placed: {placement.note}.")
    grades = StudyGrades(study, placements, predictions, None, warnings=warnings, calibrated=calibrated)
    if profile and study.axial is not None:
        on_axial = [(index, by_slice[(id(study.axial), index)]) for index in range(len(study.axial.slices))
                    if (id(study.axial), index) in by_slice]
        if on_axial:
            grades.profile = np.stack([prediction.ensemble for _, prediction in on_axial])
            grades.profile_instances = [study.axial.slices[i].instance_number for i, _ in on_axial]
            grades.profile_positions_mm = [study.axial.slices[i].position_mm for i, _ in on_axial]
    return grades


@dataclass
class LevelHeatmaps:
    """Every model's heatmap at one placed level, on that level's own axial slice."""

    level: str
    axial_instance: int
    heatmaps: list[Heatmap]


def explain_study(models: list[LoadedModel], placements: dict[str, Placement], *,
                  device: torch.device | str = "cpu") -> tuple[list[LevelHeatmaps], list[str]]:
    """Heatmaps for each placed level on its slice, each model explaining all levels in one batched pass
    (``explain_slices``); the levels not placed, or whose slice cannot be decoded, are named in the warnings."""
    pairs, kept, warnings = [], [], []
    for level, placement in placements.items():
        if not placement.placed:
            continue
        try:
            pairs.append((placement.series.slices[placement.index].read().pixels, level))
            kept.append(placement)
        except ImageReadError:
            warnings.append(f"{level}: its axial slice could not be decoded, so it has no heatmaps.")
    explained = explain_slices(models, pairs, device=device) if pairs else []
    return ([LevelHeatmaps(p.level, p.axial_instance, heatmaps) for p, heatmaps in zip(kept, explained, strict=True)],
            warnings)
