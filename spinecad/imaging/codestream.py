"""The size a compressed DICOM frame declares in its own header (JPEG, JPEG-LS, JPEG 2000), read without decoding.

A decoder allocates what the codestream declares, whatever the DICOM header says: a 6 KB frame declaring
60000 x 60000 pixels made libjpeg allocate 13 GB. Reading these few header bytes first lets the reader refuse it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom import uid

JPEG_SYNTAXES = frozenset({
    uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
    uid.JPEGLSLossless, uid.JPEGLSNearLossless,
})
JPEG2000_SYNTAXES = frozenset({
    uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K,
})
# Baseline, extended, lossless and JPEG-LS: the processes DICOM's JPEG transfer syntaxes use. Progressive,
# hierarchical and arithmetic-coded frames are not valid there, and progressive scans are a known decoder DoS.
_DICOM_SOF = frozenset({0xC0, 0xC1, 0xC3, 0xF7})
_OTHER_SOF = frozenset({0xC2, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn carry no length
_J2K_START = b"\xff\x4f\xff\x51"  # SOC followed by SIZ, as the standard requires
_J2K_SEARCH = 65_536  # a JP2 wrapper puts a few boxes before the codestream


class CodestreamError(ValueError):
    """A compressed frame whose header is missing, malformed or not one DICOM allows; the message says which."""


@dataclass(frozen=True)
class DeclaredSize:
    """What a codestream says it will decode to."""

    rows: int
    columns: int
    components: int
    tiles: int = 1


def declared_size(frame: bytes, syntax: str) -> DeclaredSize | None:
    """The size ``frame`` declares for a JPEG-family or JPEG 2000 transfer syntax; None for other syntaxes."""
    if syntax in JPEG_SYNTAXES:
        return jpeg_size(frame)
    if syntax in JPEG2000_SYNTAXES:
        return jpeg2000_size(frame)
    return None


def jpeg_size(frame: bytes) -> DeclaredSize:
    """Walk the marker segments of a JPEG or JPEG-LS frame up to its frame header (SOFn)."""
    if frame[:2] != b"\xff\xd8":
        raise CodestreamError("does not start like a JPEG stream")
    pos = 2
    while pos + 1 < len(frame):
        if frame[pos] != 0xFF:
            raise CodestreamError("has corrupt JPEG markers")
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            break
        if marker in _DICOM_SOF or marker in _OTHER_SOF:
            if marker in _OTHER_SOF:
                raise CodestreamError("uses a JPEG process (progressive, hierarchical or arithmetic) "
                                      "that DICOM's JPEG transfer syntaxes do not allow")
            if pos + 10 > len(frame):
                break
            lines, samples, components = struct.unpack_from(">HHB", frame, pos + 5)
            if lines == 0:
                raise CodestreamError("does not state the image height in its JPEG frame header")
            return DeclaredSize(lines, samples, components)
        if pos + 4 > len(frame):
            break
        (length,) = struct.unpack_from(">H", frame, pos + 2)
        if length < 2:
            raise CodestreamError("has corrupt JPEG markers")
        pos += 2 + length
    raise CodestreamError("has no JPEG frame header stating its size")


def jpeg2000_size(frame: bytes) -> DeclaredSize:
    """Read the SIZ segment of a JPEG 2000 codestream (bare or inside a JP2 wrapper)."""
    start = frame.find(_J2K_START, 0, _J2K_SEARCH)
    if start < 0 or start + 42 > len(frame):
        raise CodestreamError("has no JPEG 2000 image header (SIZ) stating its size")
    x, y, x_offset, y_offset, tile_x, tile_y, tile_x_offset, tile_y_offset, components = struct.unpack_from(
        ">IIIIIIIIH", frame, start + 8
    )
    if not (x > x_offset and y > y_offset and tile_x and tile_y and tile_x_offset <= x_offset
            and tile_y_offset <= y_offset):
        raise CodestreamError("has an inconsistent JPEG 2000 image header (SIZ)")
    tiles = -(-(x - tile_x_offset) // tile_x) * -(-(y - tile_y_offset) // tile_y)
    return DeclaredSize(y - y_offset, x - x_offset, components, tiles)
