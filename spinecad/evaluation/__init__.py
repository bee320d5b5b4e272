"""Evaluation: Table-2 metrics and the patient-level bootstrap, the artefact format and its store, scoring."""
