"""One frame of a DICOM's pixel data -> array, with every size the data declares checked before decoding.

Native data: pydicom checks its length against the header before allocating. Compressed data: the frame's own
codestream header must state the size the DICOM header does (:mod:`spinecad.imaging.codestream`), and RLE goes
through the bounded decoder in :mod:`spinecad.imaging.rle`. Only that one frame is ever decoded.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from spinecad.imaging import rle
from spinecad.imaging.codestream import CodestreamError, declared_size
from spinecad.imaging.errors import ImageReadError
from spinecad.imaging.limits import MAX_COMPONENTS, MAX_TILES

# The Image Pixel module: all pydicom needs to decode a frame (header text that could identify anyone stays out).
_PIXEL_MODULE = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
                 "PixelRepresentation", "PhotometricInterpretation", "PlanarConfiguration")
_UID_SHAPE = re.compile(r"[0-9]+(\.[0-9]+)*")

rle.register()


def transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax; for a bare dataset without file meta, the encoding pydicom found it in."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return UID(str(meta.TransferSyntaxUID).strip())
    implicit, little_endian = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little_endian in (None, True) else ExplicitVRBigEndian


def syntax_name(syntax: UID) -> str:
    """A transfer syntax as a person can look it up; a value that is not a UID at all is not quoted."""
    if syntax.is_transfer_syntax:
        return f"{syntax.name} ({syntax})"
    return f"'{syntax}'" if _UID_SHAPE.fullmatch(str(syntax)) and len(syntax) <= 64 else "(not a valid UID)"


def decode_frame(ds: Dataset, frame: int, frames: int, rows: int, columns: int) -> np.ndarray:
    """Decode frame ``frame`` (0-based) of ``frames``; ImageReadError when it cannot or must not be decoded."""
    syntax = transfer_syntax(ds)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageReadError(
            f"The DICOM's transfer syntax {syntax_name(syntax)} is not one this reader can decode; "
            "re-export the slice uncompressed or as PNG."
        ) from None
    if not decoder.is_available:
        raise ImageReadError(
            f"The DICOM's transfer syntax {syntax_name(syntax)} needs a decoder that is not installed "
            "(see requirements.txt: pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)."
        )
    source, index = ds, (frame if frames > 1 else None)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):  # a bare dataset: pydicom decodes by this tag
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    if syntax.is_encapsulated:
        source, index = _single_frame(ds, syntax, frame, frames, rows, columns), None
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return pixel_array(source, index=index, decoding_plugin=rle.PLUGIN if syntax == RLELossless else "")
    except Exception:  # noqa: BLE001 - decoders raise many types; the user needs one answer
        raise ImageReadError(
            f"The DICOM's pixel data could not be decoded ({syntax_name(syntax)}): the file is truncated or "
            "corrupt, or uses a variant of this compression the installed decoders do not handle."
        ) from None


def _single_frame(ds: Dataset, syntax: UID, frame: int, frames: int, rows: int, columns: int) -> Dataset:
    """The one compressed frame to decode, as a dataset of its own, once its codestream header is checked.

    Decoding exactly the bytes that were checked means no other frame's header can slip past the check.
    """
    try:
        offsets = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        data = get_frame(ds.PixelData, frame, number_of_frames=frames, extended_offsets=offsets)
    except Exception:  # noqa: BLE001 - a broken fragment table is a corrupt file, whatever pydicom calls it
        raise ImageReadError(
            f"The DICOM's pixel data could not be decoded ({syntax_name(syntax)}): frame {frame + 1} is missing "
            "from its compressed data, so the file is truncated or corrupt."
        ) from None
    try:
        declared = declared_size(data, syntax)
        if syntax == RLELossless:  # pydicom allocates the frame before its decoder runs: check the data first
            rle.check_frame(data, rows, columns, _int(ds, "SamplesPerPixel", 1), _int(ds, "BitsAllocated", 0))
    except CodestreamError as error:
        raise ImageReadError(f"The DICOM's pixel data could not be decoded: the compressed frame {error}.") from None
    except ValueError as error:
        raise ImageReadError(f"The DICOM's pixel data could not be decoded: {error}.") from None
    if declared is not None:
        if (declared.rows, declared.columns) != (rows, columns):
            raise ImageReadError(
                f"The DICOM's pixel data could not be decoded: its compressed frame declares {declared.rows} x "
                f"{declared.columns} pixels but the header states {rows} x {columns}, so it was not decompressed."
            )
        if not 0 < declared.components <= MAX_COMPONENTS or declared.tiles > MAX_TILES:
            raise ImageReadError(
                f"The DICOM's pixel data could not be decoded: its compressed frame declares "
                f"{declared.components} colour components in {declared.tiles} tiles, more than a slice can have."
            )
    single = Dataset()
    single.file_meta = FileMetaDataset()
    single.file_meta.TransferSyntaxUID = syntax
    try:
        for keyword in _PIXEL_MODULE:
            if keyword in ds:
                single[keyword] = ds[keyword]
    except Exception:  # noqa: BLE001 - a malformed pixel-module value; pydicom raises whatever its parser hit
        raise ImageReadError("The DICOM header's description of the pixel data (group 0028) is malformed.") from None
    single.NumberOfFrames = 1
    single.PixelData = encapsulate([data])
    single["PixelData"].VR = "OB"
    return single


def _int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword, default))
    except Exception:  # noqa: BLE001 - malformed: pydicom's decoder will refuse the file with its own check
        return default
