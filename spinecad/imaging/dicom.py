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
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import UID

from spinecad.imaging.errors import ImageReadError
from spinecad.imaging.limits import check_declared_size
from spinecad.imaging.slice import NOT_AXIAL_WARNING, Slice, SliceFacts
from spinecad.imaging.window import auto_window, require_finite_contrast, saturation_warning

# pydicom's value-validation warnings can quote header values (a birth date, a name): silence them for good.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

_COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_PLANES = ("sagittal", "coronal", "axial")  # the plane whose normal is the patient x, y or z axis


def read_dicom(data: bytes, *, force: bool = False) -> Slice:
    """Decode one DICOM file's pixels (middle frame of a multi-frame file) into a windowed [0, 1] slice."""
    ds = _parse(data, force=force)
    rows, columns, frames = _declared_geometry(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    warnings_out: list[str] = []

    frame = frames // 2
    if frames > 1:
        warnings_out.append(f"The file holds {frames} frames; frame {frame + 1} (the middle one) was used.")
    stored = _decode_frame(ds, frame, frames)

    if photometric in _COLOUR_PHOTOMETRICS:
        # pydicom returns YBR as RGB already; luminance keeps what a greyscale MR slice would show.
        stored = stored.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        warnings_out.append(f"Colour DICOM ({photometric}) converted to greyscale; MR slices are normally greyscale.")
        photometric_used = "MONOCHROME2"
    elif photometric in ("MONOCHROME1", "MONOCHROME2"):
        photometric_used = photometric
    else:
        raise ImageReadError(
            f"The DICOM's photometric interpretation {photometric!r} is not supported; "
            "export the slice as greyscale (MONOCHROME2) DICOM, PNG or JPEG."
        )
    if stored.ndim != 2:
        raise ImageReadError("The DICOM's pixel data does not decode to one 2-D image.")

    with np.errstate(all="ignore"):
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
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

    facts = SliceFacts(
        source_format="DICOM",
        rows=rows,
        columns=columns,
        pixel_spacing_mm=_pixel_spacing(ds),
        window=window,
        window_source=window_source,
        orientation=orientation,
        photometric=photometric,
        frames=frames,
        frame_used=frame,
        bits_stored=_int_or_none(ds.get("BitsStored")),
        warnings=tuple(warnings_out),
    )
    return Slice(pixels=np.ascontiguousarray(scaled, dtype=np.float32), facts=facts)


def _parse(data: bytes, *, force: bool) -> Dataset:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=force)
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


def _decode_frame(ds: Dataset, frame: int, frames: int) -> np.ndarray:
    tsyntax = UID(str(ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ExplicitVRLittleEndian)))
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise ImageReadError(
            f"The DICOM's transfer syntax {_syntax_name(tsyntax)} is not one this reader can decode; "
            "re-export the slice uncompressed or as PNG."
        ) from None
    if not decoder.is_available:
        raise ImageReadError(
            f"The DICOM's transfer syntax {_syntax_name(tsyntax)} needs a decoder that is not installed "
            "(see requirements.txt: pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)."
        )
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return pixel_array(ds, index=frame if frames > 1 else None)
    except Exception:  # noqa: BLE001 - decoders raise many types; the user needs one answer
        raise ImageReadError(
            f"The DICOM's pixel data could not be decoded ({_syntax_name(tsyntax)}): the file is truncated or "
            "corrupt, or uses a variant of this compression the installed decoders do not handle."
        ) from None


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
    normal = np.cross(cosines[:3], cosines[3:])
    if np.linalg.norm(normal) < 1e-6:
        return None
    return _PLANES[int(np.argmax(np.abs(normal)))]


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    try:
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    except Exception:  # noqa: BLE001 - absent or malformed spacing is simply unknown
        return None
    return (row_mm, col_mm)


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _syntax_name(tsyntax: UID) -> str:
    return f"{tsyntax.name} ({tsyntax})" if tsyntax.is_transfer_syntax else f"'{tsyntax}'"
