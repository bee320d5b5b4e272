"""Everything the visitor sees: the Gradio app, its Plotly charts, HTML, tables and wording.

Nothing outside this package imports it: the library below knows no screen, and ``train`` never stands on it.

    demo = ui.build(predictor, examples_dir=...)   # Predict, Study, Compare tabs; /predict, /explain, /predict_study
    ui.launch(demo)                                 # queue, limits, theme, CSS
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from spinecad.evaluation.artefacts import ENSEMBLE_KEY, ArtefactError
from spinecad.evaluation.store import load_metrics
from spinecad.examples import read_example_index
from spinecad.inference.localizing import load_localizer
from spinecad.inference.manifest import ManifestError
from spinecad.inference.predictor import Predictor
from spinecad.logs import warn_once
from spinecad.study.archive import MAX_UPLOAD_BYTES
from spinecad.ui import runtime
from spinecad.ui import text as ui_text
from spinecad.ui.compare_tab import CompareTab
from spinecad.ui.predict_tab import PredictTab
from spinecad.ui.study_tab import StudyTab

CSS = files("spinecad.ui").joinpath("style.css").read_text(encoding="utf-8")
logger = logging.getLogger(__name__)

QUEUE_SIZE = 32
# Gradio's own cache (uploads it tracks, e.g. of requests refused before reaching us): swept every 5 minutes.
CACHE_SWEEP = (300, 300)

__all__ = ["build", "launch", "load_predictor"]


def load_predictor(manifest_path: str | Path) -> tuple[Predictor, str | None]:
    """Every model of the manifest (CUDA when present, else the CPU), or no models and the reason why.

    The ensemble's own temperature (for the calibrated switch) comes from the manifest's evaluation artefacts.
    """
    try:
        predictor = Predictor.from_manifest(manifest_path)
    except ManifestError as error:
        return Predictor([]), f"{error} {ui_text.NO_MANIFEST}"
    predictor.ensemble_temperature = ensemble_temperature(predictor.manifest.evaluation_dir)
    return predictor, None


def ensemble_temperature(evaluation_dir: Path | None) -> float:
    """The temperature fitted for the ensemble's mean on validation; 1.0 (logged once) when none is stored."""
    try:
        calibrated = load_metrics(evaluation_dir, ENSEMBLE_KEY, "val").calibration.calibrated
    except (ArtefactError, TypeError):
        calibrated = None
    if calibrated is None or calibrated.temperature is None:
        warn_once(logger, "No ensemble temperature in the evaluation artefacts: the calibrated ensemble is the plain "
                          "mean of the calibrated models.")
        return 1.0
    return calibrated.temperature


def build(predictor: Predictor, *, examples_dir: Path | None = None, problem: str | None = None) -> gr.Blocks:
    """The app around a loaded predictor: a banner, the Predict tab, the Study tab (with the APIs) and the Compare tab.

    Uploads land in Gradio's upload folder (GRADIO_TEMP_DIR), which Gradio reads here, at launch and on every
    request: set it before building and leave it while the app serves.
    """
    manifest = predictor.manifest
    demo = bool(manifest and manifest.demo)
    localizer, localizer_problem = load_localizer(manifest)  # None and why when none is listed or it fails
    examples = read_example_index(examples_dir) if examples_dir is not None else []
    upload_root = get_upload_folder()
    banner = ui_text.banner_markdown(
        title=manifest.title if manifest else "no manifest", demo=demo, models=predictor.models,
        failures=predictor.failures, device=str(predictor.device), manifest_root=manifest.root if manifest else None,
        problem=problem,
    )
    with gr.Blocks(title="SpineCAD", analytics_enabled=False, delete_cache=CACHE_SWEEP) as blocks:
        gr.Markdown(banner, elem_id="banner")
        with gr.Tabs():
            with gr.Tab("Predict", id="predict"):
                PredictTab(predictor, demo=demo, examples=examples, examples_dir=examples_dir,
                           upload_root=upload_root, problem=problem).render()
            with gr.Tab("Study", id="study"):
                StudyTab(predictor, upload_root=upload_root, problem=problem, localizer=localizer,
                         localizer_problem=localizer_problem).render()
            with gr.Tab("Compare", id="compare") as compare_tab:
                CompareTab(manifest.evaluation_dir if manifest else None, [m.key for m in predictor.models],
                           upload_root).render(compare_tab)
    return blocks


def launch(blocks: gr.Blocks, **options) -> tuple:
    """Queue and serve the app with its limits, theme and CSS (GRADIO_SERVER_NAME / _PORT honoured)."""
    settings = {"max_file_size": MAX_UPLOAD_BYTES, "css": CSS, "theme": gr.themes.Soft(), "footer_links": ["api"],
                "ssr_mode": False, "state_session_capacity": runtime.MAX_SESSIONS, **options}
    return blocks.queue(default_concurrency_limit=4, max_size=QUEUE_SIZE).launch(**settings)
