"""Shared fixtures: real pydicom test files, the real RSNA label CSVs when present, tiny CPU-profile models, the
app fixture set, one in-process app on it for the whole session, and the committed demo set's predictor."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "rsna2024"
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
ARTIFACTS = Path(os.environ.get("SPINECAD_TEST_ARTIFACTS", REPO / "test-artifacts"))
# The committed demo set and the app's example slices (the app finds them the same way: app.py's CHECKPOINTS).
DEMO_MANIFEST = REPO / "checkpoints" / "manifest.json"
EXAMPLES_DIR = REPO / "checkpoints" / "examples"


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
    from spinecad.models.model import SpineCADModel
    from spinecad.models.registry import CPU_PROFILE

    torch.manual_seed(0)
    return [SpineCADModel.build(spec.name).eval() for spec in CPU_PROFILE]


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files a person may want to look at (screenshots, reports)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


# ---- The app ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fixture_manifest(tmp_path_factory) -> Path:
    """``tests/app_fixture.write_fixture_set``'s manifest (six random CPU-profile models and an evaluation tree),
    written once per session under the basetemp, where test_bench_scripts finds it too."""
    from tests.app_fixture import write_fixture_set

    return write_fixture_set(tmp_path_factory.getbasetemp() / "spinecad-fixture")


@pytest.fixture(scope="session")
def upload_dir(tmp_path_factory) -> Iterator[Path]:
    """The session's Gradio upload folder: GRADIO_TEMP_DIR for the whole session, restored afterwards.

    Gradio reads the variable when a page is built (``ui.build``: ``get_upload_folder()``), when it launches (where
    the server files uploads) and on every request (which files a request may read), so it stays set while any
    in-process app serves. Tests look inside it: nothing a visitor uploads may stay there.
    """
    folder = tmp_path_factory.mktemp("app") / "gradio-tmp"
    folder.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(folder))
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        yield folder


@contextlib.contextmanager
def serving(predictor, upload_dir: Path) -> Iterator[str]:
    """``ui.build`` -> ``ui.launch`` in this process on a free loopback port, as app.py does; yield the URL.

    ``upload_dir`` is the session's (the ``upload_dir`` fixture, which has set GRADIO_TEMP_DIR to it).
    """
    from spinecad import ui
    from tests.app_fixture import free_port

    assert os.environ.get("GRADIO_TEMP_DIR") == str(upload_dir), "request the upload_dir fixture first"
    blocks = ui.build(predictor, examples_dir=EXAMPLES_DIR)
    for attempt in range(3):  # the free port can be taken between the probe and the bind
        try:
            _, url, _ = ui.launch(blocks, prevent_thread_lock=True, server_name="127.0.0.1",
                                  server_port=free_port(), quiet=True)
            break
        except OSError:
            if attempt == 2:
                raise
    try:
        yield url
    finally:
        blocks.close()


@dataclass(frozen=True)
class LaunchedApp:
    url: str
    upload_dir: Path  # the server's upload folder (GRADIO_TEMP_DIR)
    predictor: object  # spinecad.inference.predictor.Predictor


@pytest.fixture(scope="session")
def launched_app(fixture_manifest, upload_dir) -> Iterator[LaunchedApp]:
    """ONE app for the session's app and browser tests, launched in this process (``prevent_thread_lock``).

    Its manifest lists the fixture set's six models plus a seventh whose folder is missing, so the same app shows a
    load failure in its banner while the six others serve. The models run on the CPU (fp32), wherever CUDA is.
    """
    from spinecad.inference.predictor import Predictor
    from tests.app_fixture import write_manifest_with_missing_model

    predictor = Predictor.from_manifest(write_manifest_with_missing_model(fixture_manifest.parent), device="cpu")
    with serving(predictor, upload_dir) as url:
        yield LaunchedApp(url, upload_dir, predictor)


@pytest.fixture(scope="session")
def app_client(launched_app):
    """A gradio_client Client of ``launched_app``."""
    from gradio_client import Client

    client = Client(launched_app.url, verbose=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def demo_predictor():
    """The committed demo set (DEMO_MANIFEST) loaded once, on the CPU (fp32, the same figures on any machine)."""
    from spinecad.inference.predictor import Predictor

    return Predictor.from_manifest(DEMO_MANIFEST, device="cpu")


@pytest.fixture(scope="session")
def phantom_studies(tmp_path_factory):
    """Twelve phantom studies in the Kaggle layout (sagittal T2/STIR + axial T2, canal points), 256 px like the demo
    set's training images; ``.truth`` says which axial instance the phantom placed at each level."""
    from train.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantom-studies"), n_studies=12, seed=11)
