"""The grading vocabulary shared by every part of SpineCAD: disc levels and severity grades."""

from __future__ import annotations

# Disc levels in anatomical order; the index is the level id fed to the level embedding.
LEVELS: tuple[str, ...] = ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")
# The same levels as the RSNA 2024 CSV column suffixes spell them.
LEVEL_KEYS: tuple[str, ...] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")
# Severity grades in increasing order; the index is the class id.
SEVERITIES: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")
# Column names of a Kaggle-format predictions file, in class order.
SEVERITY_COLUMNS: tuple[str, ...] = ("normal_mild", "moderate", "severe")
CONDITION = "spinal_canal_stenosis"


def level_index(level: str) -> int:
    """Return the level id for "L4/L5", "l4_l5" or "L4-L5"; raise ValueError naming the valid levels."""
    key = level.strip().lower().replace("/", "_").replace("-", "_")
    if key in LEVEL_KEYS:
        return LEVEL_KEYS.index(key)
    raise ValueError(f"Unknown disc level {level!r}; expected one of {', '.join(LEVELS)}.")


def severity_index(severity: str) -> int:
    """Return the class id of a grade as RSNA spells it ("Normal/Mild", "Moderate", "Severe")."""
    if severity in SEVERITIES:
        return SEVERITIES.index(severity)
    raise ValueError(f"Unknown severity {severity!r}; expected one of {', '.join(SEVERITIES)}.")


def row_id(study_id: int | str, level: str) -> str:
    """Kaggle row id of a study's canal grade at a level: ``<study>_spinal_canal_stenosis_<l4_l5>``."""
    return f"{study_id}_{CONDITION}_{LEVEL_KEYS[level_index(level)]}"
