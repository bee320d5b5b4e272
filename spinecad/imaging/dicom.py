"""DICOM bytes -> Slice through pydicom 3's ``pydicom.pixels`` API.

The pydicom Dataset never leaves this module: only the non-identifying facts in :class:`SliceFacts` do, and
error messages are our own sentences, never pydicom's (which can quote header values).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from spinecad.imaging.deflate import read_deflated
from spinecad.imaging.errors import ImageReadError
from spinecad.imaging.frames import decode_frame
from spinecad.imaging.limits import check_declared_size
from spinecad.imaging.slice import BURNED_IN_TEXT_WARNING, NOT_AXIAL_WARNING, Slice, SliceFacts
from spinecad.imaging.window import auto_window, require_finite_contrast, saturation_warning

# pydicom's value-validation warnings can quote header values (a birth date, a name): silence them for good.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

_COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
# Defined terms (PS3.3 C.7.6.3.1.2) that a message may quote; any other value is header text and is not repeated.
_KNOWN_PHOTOMETRICS = (*_COLOUR_PHOTOMETRICS, "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "YBR_PARTIAL_422",
                       "HSV", "ARGB", "CMYK", "XYB")
_PLANES = ("sagittal", "coronal", "axial")  # the plane whose normal is the patient x, y or z axis


def read_dicom(data: bytes, *, force: bool = False) -> Slice:
    """Decode one DICOM file's pixels (middle frame of a multi-frame file) into a windowed [0, 1] slice."""
    ds = _parse(data, force=force)
    rows, columns, frames = _declared_geometry(ds)
    photometric = _photometric(ds)
    if photometric not in (*_COLOUR_PHOTOMETRICS, "MONOCHROME1", "MONOCHROME2"):  # refused before any decoding
        shown = repr(photometric) if photometric in _KNOWN_PHOTOMETRICS else "(an unknown value)"
        raise ImageReadError(
            f"The DICOM's photometric interpretation {shown} is not supported; "
            "export the slice as greyscale (MONOCHROME2) DICOM, PNG or JPEG."
        )
    warnings_out: list[str] = []

    frame = frames // 2
    if frames > 1:
        warnings_out.append(f"The file holds {frames} frames; frame {frame + 1} (the middle one) was used.")
    stored = decode_frame(ds, frame, frames, rows, columns)

    if photometric in _COLOUR_PHOTOMETRICS:
        if stored.ndim != 3 or stored.shape[-1] != 3:
            raise ImageReadError(
                f"The DICOM says its pixels are colour ({photometric}) but they do not decode to three channels."
            )
        # pydicom returns YBR as RGB already; luminance keeps what a greyscale MR slice would show. Channel by
        # channel, so no float64 copy of all three channels is ever held.
        stored = 0.299 * stored[..., 0] + 0.587 * stored[..., 1] + 0.114 * stored[..., 2]
        warnings_out.append(f"Colour DICOM ({photometric}) converted to greyscale; MR slices are normally greyscale.")
        photometric_used = "MONOCHROME2"
    else:
        photometric_used = photometric
    if stored.ndim != 2 or stored.shape != (rows, columns):
        raise ImageReadError("The DICOM's pixel data does not decode to one 2-D image.")

    values = _modality_values(stored, ds)
    require_finite_contrast(values)
    scaled, window, window_source, window_warning = _apply_window(values, ds, photometric_used)
    if window_warning:
        warnings_out.append(window_warning)
    if photometric_used == "MONOCHROME1":
        scaled = 1.0 - scaled  # MONOCHROME1 shows the lowest value as white
    saturation = saturation_warning(scaled)
    if saturation:
        warnings_out.append(saturation)

    orientation = _orientation(ds)
    if orientation not in (None, "axial"):
        warnings_out.append(NOT_AXIAL_WARNING.format(plane=orientation))
    if _says_burned_in_text(ds):
        warnings_out.append(BURNED_IN_TEXT_WARNING)

    facts = SliceFacts(
        source_format="DICOM",
        rows=rows,
        columns=columns,
        pixel_spacing_mm=_pixel_spacing(ds),
        window=window,
        window_source=window_source,
        orientation=orientation,
        photometric=photometric if photometric in _KNOWN_PHOTOMETRICS else None,
        frames=frames,
        frame_used=frame,
        bits_stored=_int_or_none(ds, "BitsStored"),
        warnings=tuple(warnings_out),
    )
    return Slice(pixels=np.ascontiguousarray(scaled, dtype=np.float32), facts=facts)


def _parse(data: bytes, *, force: bool) -> Dataset:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_deflated(data, force=force)  # None unless deflated: then pydicom reads it as it is
            if ds is None:
                ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except ImageReadError:
        raise
    except InvalidDicomError:
        raise ImageReadError("The file is not a valid DICOM file.") from None
    except Exception:  # noqa: BLE001 - any parser failure is the same answer for the user
        raise ImageReadError("The DICOM file is truncated or corrupt: its header could not be read.") from None
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise ImageReadError("The DICOM holds floating-point pixel data, which is not supported.")
        raise ImageReadError(
            "The DICOM file has no image in it (no Pixel Data element): it may be a report, a structured document "
            "or a truncated file."
        )
    return ds


def _declared_geometry(ds: Dataset) -> tuple[int, int, int]:
    try:
        rows = int(ds.Rows)
        columns = int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:  # noqa: BLE001 - missing or malformed size tags
        raise ImageReadError("The DICOM header does not state a valid image size (Rows/Columns).") from None
    check_declared_size(rows, columns, frames)
    return rows, columns, frames


def _photometric(ds: Dataset) -> str:
    try:
        return str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    except Exception:  # noqa: BLE001 - a malformed value is as unsupported as an unknown one
        return ""


def _modality_values(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality units (rescale slope/intercept or a Modality LUT), as float64."""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    except Exception:  # noqa: BLE001 - malformed rescale values or LUT; pydicom raises what its parser hit
        raise ImageReadError(
            "The DICOM's rescale values (Rescale Slope/Intercept or Modality LUT) are malformed, so its pixel "
            "values cannot be interpreted."
        ) from None


def _says_burned_in_text(ds: Dataset) -> bool:
    try:
        return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
    except Exception:  # noqa: BLE001 - an unreadable flag says nothing
        return False


def _apply_window(
    values: np.ndarray, ds: Dataset, photometric: str
) -> tuple[np.ndarray, tuple[float, float] | None, str, str | None]:
    """Apply the header's VOI LUT or window (pydicom), else an automatic window; report what was used."""
    has_lut = "VOILUTSequence" in ds
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if has_lut or has_window:
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                out = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
                low, high = _voi_output_range(ds, has_lut)
            if high > low and np.isfinite(out).all():
                scaled = np.clip((out - low) / (high - low), 0.0, 1.0)
                if float(scaled.max()) > float(scaled.min()):
                    source = "DICOM VOI LUT" if has_lut else "DICOM window"
                    return scaled, None if has_lut else _window_values(ds), source, None
            problem = "shows nothing of this image"
        except Exception:  # noqa: BLE001 - an invalid window in the header is replaced, and the user told
            problem = "is invalid"
        scaled, window = auto_window(values)
        warning = f"The window in the DICOM header {problem}; an automatic window was used instead."
        return scaled, window, "auto (0.5-99.5 percentile)", warning
    scaled, window = auto_window(values)
    return scaled, window, "auto (0.5-99.5 percentile)", None


def _voi_output_range(ds: Dataset, has_lut: bool) -> tuple[float, float]:
    if has_lut:
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
        return float(lut.min()), float(lut.max())
    # Windowing maps everything below/above the window to pydicom's output bounds: probe them with extremes.
    bounds = apply_voi_lut(np.array([-1e12, 1e12]), ds, prefer_lut=False)
    return float(np.min(bounds)), float(np.max(bounds))


def _window_values(ds: Dataset) -> tuple[float, float]:
    center, width = ds.WindowCenter, ds.WindowWidth
    center = center[0] if isinstance(center, pydicom.multival.MultiValue) else center
    width = width[0] if isinstance(width, pydicom.multival.MultiValue) else width
    return float(center), float(width)


def _orientation(ds: Dataset) -> str | None:
    """Name the plane whose normal is closest to the slice normal, from ImageOrientationPatient."""
    try:
        cosines = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    except Exception:  # noqa: BLE001 - absent or malformed: orientation unknown
        return None
    if cosines.shape != (6,) or not np.isfinite(cosines).all():
        return None
    with np.errstate(all="ignore"):  # absurd cosines (1e300) overflow: the check below turns them away
        normal = np.cross(cosines[:3], cosines[3:])
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-6:
        return None
    return _PLANES[int(np.argmax(np.abs(normal)))]


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    try:
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    except Exception:  # noqa: BLE001 - absent or malformed spacing is simply unknown
        return None
    return (row_mm, col_mm)


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    try:
        return int(ds.get(keyword))
    except Exception:  # noqa: BLE001 - absent or malformed: unknown
        return None
