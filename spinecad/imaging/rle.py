"""A bounded RLE Lossless decoder, registered with pydicom as the ``spinecad`` plugin.

pydicom's own RLE decoder allocates the whole frame before looking at the data and lets each segment grow without
limit (two bytes of PackBits become 128): a 2 KB file declaring 8000 x 5000 pixels cost 300 MB, an 8 MB one 700 MB
and ten seconds. This one refuses segments too short or too long for the declared size before allocating anything
(so its time is bounded by the declared size too), and stops each segment at the length the header allows.
The output layout is pydicom's (planar configuration 1).
"""

from __future__ import annotations

import itertools
import struct

from pydicom.pixels import get_decoder
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import RLELossless

PLUGIN = "spinecad"
DECODER_DEPENDENCIES = {RLELossless: ()}
_MAX_SEGMENTS = 15  # PS3.5 G.3.1: the RLE header has room for 15 offsets
_MAX_RUN = 128  # one PackBits control byte repeats a byte at most 128 times


def is_available(syntax: str) -> bool:
    """pydicom's plugin interface: this decoder needs nothing beyond Python."""
    return syntax in DECODER_DEPENDENCIES


def check_frame(src: bytes, rows: int, columns: int, samples: int, bits_allocated: int) -> list[tuple[int, int]]:
    """The (start, end) of each segment, once every one could decode to exactly one plane of ``rows x columns``.

    Run before anything is allocated for the frame: a segment too short to fill the plane even with
    all-repeat runs, or longer than any encoding of it, is refused with a ValueError saying which.
    """
    if bits_allocated % 8:
        raise ValueError(f"RLE data with {bits_allocated} bits allocated cannot be decoded")
    plane = rows * columns
    segments = segment_slices(src, samples * (bits_allocated // 8))
    for start, end in segments:
        if (end - start) * _MAX_RUN < plane * 2:  # even all-repeat runs could not fill the plane
            raise ValueError("an RLE segment is too short for the image size the header declares")
        if end - start > 2 * plane + 2:  # longer than any encoding of the plane, even one literal per byte
            raise ValueError("an RLE segment is longer than any encoding of the declared image size")
    return segments


def decode_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    """pydicom's plugin interface: one RLE frame -> little-endian bytes, sample planes one after another."""
    rows, columns, samples, bits = runner.rows, runner.columns, runner.samples_per_pixel, runner.bits_allocated
    segments = check_frame(src, rows, columns, samples, bits)
    bytes_per_sample, plane = bits // 8, rows * columns
    decoded = bytearray(plane * samples * bytes_per_sample)
    stride = bytes_per_sample * plane
    big_endian = runner.get_option("rle_segment_order", ">") == ">"
    for index, (start, end) in enumerate(segments):
        sample, byte = divmod(index, bytes_per_sample)
        if big_endian:  # segments hold the most significant byte first
            byte = bytes_per_sample - byte - 1
        offset = sample * stride + byte
        decoded[offset:offset + stride:bytes_per_sample] = decode_segment(src[start:end], plane)
    runner.set_option("planar_configuration", 1)
    return decoded


def segment_slices(src: bytes, expected: int) -> list[tuple[int, int]]:
    """(start, end) of each segment from the 64-byte RLE header, checked against the expected segment count."""
    if len(src) < 64:
        raise ValueError("the RLE frame is shorter than its 64-byte header")
    count, *offsets = struct.unpack_from("<16I", src)
    if count != expected or not 0 < count <= _MAX_SEGMENTS:
        raise ValueError(f"the RLE frame has {count} segments; the image needs {expected}")
    bounds = [*offsets[:count], len(src)]
    if bounds[0] < 64 or any(end <= start for start, end in itertools.pairwise(bounds)):
        raise ValueError("the RLE segment offsets are out of order or outside the frame")
    return list(itertools.pairwise(bounds))


def decode_segment(segment: bytes, length: int) -> bytearray:
    """PackBits-decode ``segment`` into exactly ``length`` bytes; anything it holds beyond that is ignored."""
    out = bytearray()
    pos, size = 0, len(segment)
    while len(out) < length and pos < size:
        control = segment[pos]
        pos += 1
        if control < 128:  # copy the next control + 1 bytes
            out += segment[pos:pos + control + 1]
            pos += control + 1
        elif control > 128:  # repeat the next byte 257 - control times
            out += segment[pos:pos + 1] * (257 - control)
            pos += 1
    if len(out) < length:
        raise ValueError(f"an RLE segment decodes to {len(out)} bytes; the image needs {length}")
    del out[length:]
    return out


def register() -> None:
    """Add this decoder to pydicom's RLE decoder (once per process)."""
    decoder = get_decoder(RLELossless)
    if PLUGIN not in decoder.available_plugins:
        decoder.add_plugin(PLUGIN, (__name__, "decode_frame"))
