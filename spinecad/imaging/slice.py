"""What the reader returns: pixels and the facts about them that are safe to show."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Where a DICOM says it is not an axial slice, users see this; the models were trained on axial T2 slices only.
NOT_AXIAL_WARNING = (
    "This slice looks {plane}, not axial: the models were trained on axial T2 slices at a disc level, "
    "so their grades for it are not meaningful."
)
# Where a DICOM's header flags burned-in annotation (BurnedInAnnotation = YES); the text itself is never read.
BURNED_IN_TEXT_WARNING = (
    "The DICOM header says the image may carry burned-in text, such as patient details: the preview shows the "
    "pixels as they are, so check it before sharing a screenshot."
)


@dataclass(frozen=True)
class SliceFacts:
    """Non-identifying facts about a slice (size, spacing, window, orientation) and warnings for the user."""

    source_format: str  # "DICOM", "PNG" or "JPEG"
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float] | None = None
    window: tuple[float, float] | None = None  # (center, width) in modality units, when a linear window was used
    window_source: str = ""  # e.g. "DICOM window", "DICOM VOI LUT", "auto (0.5-99.5 percentile)", "as stored"
    orientation: str | None = None  # "axial", "sagittal", "coronal" or "oblique" when the header says
    photometric: str | None = None
    frames: int = 1
    frame_used: int = 0
    bits_stored: int | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        """Plain JSON-able dict of the facts."""
        return {
            "source_format": self.source_format,
            "rows": self.rows,
            "columns": self.columns,
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
            "window": list(self.window) if self.window else None,
            "window_source": self.window_source,
            "orientation": self.orientation,
            "photometric": self.photometric,
            "frames": self.frames,
            "frame_used": self.frame_used,
            "bits_stored": self.bits_stored,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class Slice:
    """A greyscale slice as the models see it before resizing: float32 (rows, columns) in [0, 1]."""

    pixels: np.ndarray
    facts: SliceFacts

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.facts.warnings
