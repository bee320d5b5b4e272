"""Size limits checked before any pixel buffer is allocated (decompression bombs are refused, not decoded)."""

from spinecad.imaging.errors import ImageReadError

MAX_FILE_BYTES = 64 * 1024 * 1024  # an axial MR slice is well under 1 MB; 64 MB leaves room for multi-frame files
MAX_INFLATED_BYTES = MAX_FILE_BYTES  # a deflated DICOM may hold no more than an uncompressed file could
MAX_SIDE = 8192  # pixels along one side
MAX_PIXELS = 40_000_000  # one frame, rows x columns
MAX_FRAMES = 4096
MAX_COMPONENTS = 4  # colour channels a compressed frame may declare (RGB plus alpha at most)
MAX_TILES = 65_535  # JPEG 2000's own ceiling; tiny tiles multiply a decoder's bookkeeping


def check_declared_size(rows: int, columns: int, frames: int = 1) -> None:
    """Refuse an image whose declared size is implausible for a slice, before decoding it."""
    if rows <= 0 or columns <= 0:
        raise ImageReadError(f"The image declares an empty size ({rows} x {columns} pixels).")
    if rows > MAX_SIDE or columns > MAX_SIDE or rows * columns > MAX_PIXELS:
        raise ImageReadError(
            f"The image declares {rows} x {columns} pixels, more than the {MAX_SIDE} x {MAX_SIDE} "
            "(40 megapixel) limit for one slice; it was not decoded. Export the single axial slice instead."
        )
    if frames < 1:
        raise ImageReadError(f"The file declares {frames} frames; an image needs at least one.")
    if frames > MAX_FRAMES:
        raise ImageReadError(f"The file declares {frames} frames, more than the {MAX_FRAMES} allowed.")
