"""The checked-in corpus of nasty inputs (tests/corpus/): each file is read or refused exactly as
``tests/corpus/expectations.json`` says, within its allocation budget, and never quotes the invented patient data.

Regenerate the files with ``python -m tests.corpus.make_corpus``; ``--report`` prints what the reader says of each.
"""

from __future__ import annotations

import contextlib
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from spinecad.imaging import ImageReadError, read_slice
from tests.corpus.make_corpus import CORPUS, INVENTED_PATIENT, cases

EXPECTATIONS = json.loads((CORPUS / "expectations.json").read_text(encoding="utf-8"))["cases"]
DEFAULT_MAX_TRACED_MIB = 4.0
NOT_INPUTS = {"expectations.json", "make_corpus.py", "__pycache__"}
# The invented identity in burned_in_annotation.dcm and the name planted as a photometric interpretation.
SECRETS = ("Doe", "Jane", "DOE^JANE", *INVENTED_PATIENT.values())


def test_every_corpus_file_has_an_expectation_and_a_maker():
    on_disk = {path.name for path in CORPUS.iterdir() if path.name not in NOT_INPUTS}
    listed = [case["file"] for case in EXPECTATIONS]
    assert len(listed) == len(set(listed))
    assert on_disk == set(listed) == set(cases())


@pytest.mark.parametrize("case", EXPECTATIONS, ids=lambda case: case["file"])
def test_corpus_file_is_read_or_refused_as_specified(case: dict):
    path: Path = CORPUS / case["file"]
    with contextlib.suppress(ImageReadError):
        read_slice(path)  # once untraced: first use imports decoders and plugins, a cost no later input pays
    tracemalloc.start()
    try:
        try:
            result = read_slice(path)
            outcome = {"read": True, "warnings": list(result.warnings)}
        except ImageReadError as error:
            result, outcome = None, {"refused": str(error)}
        peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()

    expected = {key: case[key] for key in ("read", "warnings", "refused") if key in case}
    assert outcome == expected, case["case"]
    assert peak_mib <= case.get("max_traced_mib", DEFAULT_MAX_TRACED_MIB), f"{case['case']}: {peak_mib:.1f} MiB"
    if result is not None:
        assert result.pixels.dtype == np.float32 and result.pixels.shape == (result.facts.rows, result.facts.columns)
        assert np.isfinite(result.pixels).all() and result.pixels.max() > result.pixels.min()
    shown = json.dumps(outcome) + (repr(result.facts) if result is not None else "")
    assert not [secret for secret in SECRETS if secret in shown]


def test_bytes_and_path_give_the_same_answer():
    for case in EXPECTATIONS:
        data = (CORPUS / case["file"]).read_bytes()
        try:
            outcome = list(read_slice(data).warnings)
        except ImageReadError as error:
            outcome = str(error)
        assert outcome == case.get("warnings", case.get("refused")), case["file"]
