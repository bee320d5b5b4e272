"""PNG/JPEG bytes -> Slice via Pillow (8- and 16-bit greyscale, palette, RGB)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from spinecad.imaging.errors import ImageReadError
from spinecad.imaging.limits import check_declared_size
from spinecad.imaging.slice import Slice, SliceFacts
from spinecad.imaging.window import auto_window, require_finite_contrast, saturation_warning

SUPPORTED_FORMATS = ("PNG", "JPEG")
# Formats people upload by mistake, named in the refusal; their headers are identified, never decoded.
NAMED_FORMATS = ("GIF", "TIFF", "BMP", "WEBP", "JPEG2000", "PSD", "ICO")
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def read_raster(data: bytes) -> Slice:
    """Decode a PNG or JPEG into a greyscale [0, 1] slice; 16-bit images get an automatic window."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's bomb warning: we apply our own, stricter limit below
        try:  # only the two decoders we support ever see the bytes: less code parsing hostile input
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
        except Image.DecompressionBombError:
            raise ImageReadError("The image declares an enormous size and was not decoded.") from None
        except Exception:  # noqa: BLE001 - Pillow raises OSError, ValueError, SyntaxError... for broken headers
            raise ImageReadError("The file is not a readable DICOM, PNG or JPEG image.") from None
        if image.format not in SUPPORTED_FORMATS:  # e.g. MPO, a JPEG variant Pillow names apart
            raise ImageReadError(f"{image.format} images are not supported; upload a DICOM, PNG or JPEG slice.")
        fmt = image.format
        columns, rows = image.size
        check_declared_size(rows, columns)
        try:
            image.load()
            if image.format == "JPEG":
                image = ImageOps.exif_transpose(image)
        except Exception:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for broken files
            raise ImageReadError(f"The {fmt} file is truncated or corrupt.") from None

    warnings_out: list[str] = []
    if image.mode in _HIGH_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        require_finite_contrast(values)
        scaled, window = auto_window(values)
        window_source = "auto (0.5-99.5 percentile)"
        bits = 16
    else:
        grey, was_colour = _to_grey8(image)
        if was_colour:
            warnings_out.append("Colour image converted to greyscale; MR slices are normally greyscale.")
        values = grey.astype(np.float64)
        require_finite_contrast(values)
        scaled, window, window_source, bits = values / 255.0, None, "as stored (8-bit)", 8
    saturation = saturation_warning(scaled)
    if saturation:
        warnings_out.append(saturation)
    facts = SliceFacts(
        source_format=fmt,
        rows=rows,
        columns=columns,
        window=window,
        window_source=window_source,
        photometric=image.mode,
        bits_stored=bits,
        warnings=tuple(warnings_out),
    )
    return Slice(pixels=np.ascontiguousarray(scaled, dtype=np.float32), facts=facts)


def other_format_name(data: bytes) -> str | None:
    """The name of a known image format that is not supported (e.g. "GIF"), read from the header only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data), formats=NAMED_FORMATS) as image:
                return image.format
        except Exception:  # noqa: BLE001 - not one of them (or a broken one): nothing to name
            return None


def _to_grey8(image: Image.Image) -> tuple[np.ndarray, bool]:
    """Return 8-bit luminance and whether the image really carried colour (channels that differ)."""
    if image.mode in ("L", "1"):
        return np.asarray(image.convert("L")), False
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    was_colour = bool(np.abs(rgb - rgb[..., :1]).max() > 8)
    return np.asarray(image.convert("RGB").convert("L")), was_colour
