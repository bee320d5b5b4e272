"""Intensity scaling shared by DICOM and 16-bit raster input: an automatic window when none is given."""

from __future__ import annotations

import numpy as np

from spinecad.imaging.errors import ImageReadError

AUTO_WINDOW_PERCENTILES = (0.5, 99.5)


def require_finite_contrast(values: np.ndarray) -> None:
    """Refuse an image with NaN/inf values or no contrast at all: no model can grade it."""
    if not np.isfinite(values).all():
        raise ImageReadError("The image's intensity values are not finite (NaN or infinity after rescaling).")
    low, high = float(values.min()), float(values.max())
    if high == low:
        raise ImageReadError("The image is blank: every pixel has the same value.")
    if not np.isfinite(high - low):
        raise ImageReadError("The image's intensity values span more than floating point can hold (after rescaling).")


def auto_window(values: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Scale to [0, 1] between robust percentiles; return the image and the (center, width) used."""
    low, high = np.percentile(values, AUTO_WINDOW_PERCENTILES)
    if high <= low:  # a mostly flat image with a few outliers: fall back to the full range
        low, high = float(values.min()), float(values.max())
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
    return scaled, (float(low + high) / 2.0, float(high - low))


def saturation_warning(scaled: np.ndarray) -> str | None:
    """Warn when the window clips most of the image to black or white (an unusual window)."""
    clipped = float(np.mean((scaled <= 0.0) | (scaled >= 1.0)))
    if clipped > 0.8:
        return (
            f"The intensity window clips {clipped:.0%} of the pixels to black or white; the slice may look "
            "very different from the training data."
        )
    return None
