"""Whole studies: DICOM series read from a zip, a folder or several files, and where their slices lie in space."""
