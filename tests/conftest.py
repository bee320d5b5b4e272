"""Shared fixtures: real pydicom test files, the real RSNA label CSVs when present, tiny CPU-profile models."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "rsna2024"
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
ARTIFACTS = Path(os.environ.get("SPINECAD_TEST_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="session")
def rsna_dir() -> Path:
    """The real RSNA 2024 label CSVs (no images); tests that need them skip where they are absent."""
    if not (SHARED_DATA / "train.csv").exists():
        pytest.skip(f"real RSNA label files not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pydicom_file():
    """Path of one of the DICOM test files pydicom ships."""

    def find(name: str) -> Path:
        path = PYDICOM_TEST_FILES / name
        assert path.exists(), f"pydicom no longer ships {name}"
        return path

    return find


@pytest.fixture(scope="session")
def cpu_models():
    """The six CPU-profile models, randomly initialised with a fixed seed, in eval mode."""
    from spinecad.backbones import CPU_PROFILE
    from spinecad.model import SpineCADModel

    torch.manual_seed(0)
    return [SpineCADModel.build(spec.name).eval() for spec in CPU_PROFILE]


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files a person may want to look at (screenshots, reports)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
