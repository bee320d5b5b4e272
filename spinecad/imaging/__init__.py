"""Turn an uploaded or dataset slice (DICOM, PNG, JPEG) into one greyscale float32 image in [0, 1].

Only :class:`Slice` leaves this package: pixels plus non-identifying facts. DICOM headers, and with them every
identifying tag (PatientName, PatientID, dates, institution...), stay inside :mod:`spinecad.imaging.dicom`.

Every input ends in a Slice or an :class:`ImageReadError` saying why. Sizes are checked before anything is
allocated: declared sizes (:mod:`~spinecad.imaging.limits`), the sizes compressed frames declare themselves
(:mod:`~spinecad.imaging.codestream`), RLE segments (:mod:`~spinecad.imaging.rle`) and deflated datasets
(:mod:`~spinecad.imaging.deflate`). tests/test_fuzz_reader.py and the corpus in tests/corpus/ hold the evidence.
"""

from spinecad.imaging.errors import ImageReadError
from spinecad.imaging.reader import read_slice
from spinecad.imaging.slice import Slice, SliceFacts

__all__ = ["ImageReadError", "Slice", "SliceFacts", "read_slice"]
