"""Whole studies: DICOM series read from a zip, a folder or several files, where their slices lie in space, and
which axial slice each disc level is graded on.

Only non-identifying facts leave this package, as they leave :mod:`spinecad.imaging`: UIDs become keyed hashes,
series descriptions become a weighting, and file names are never opened (an upload is read in memory).
"""

from spinecad.study.archive import StudyError
from spinecad.study.levels import AxialChoice, LevelRequest, Placement, SagittalPoint, parse_levels, place_levels
from spinecad.study.series import Series, Study, StudySlice, read_study

__all__ = ["AxialChoice", "LevelRequest", "Placement", "SagittalPoint", "Series", "Study", "StudyError",
           "StudySlice", "parse_levels", "place_levels", "read_study"]
