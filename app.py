"""SpineCAD's Hugging Face Space: six models grade lumbar spinal canal stenosis on one axial MRI slice.

    python app.py      # honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; models from SPINECAD_MANIFEST or
                       # checkpoints/manifest.json

A thin shell over ``spinecad``: reading, predicting, explaining, scoring, charts and wording all live there. Uploads
are read into memory and deleted at once; the slice preview and its heatmaps are inline images, so no copy of the
slice is written to disk.
"""

import spaces  # noqa: I001 - first: on a ZeroGPU Space it patches torch before anything imports torch

import time

import gradio as gr
import numpy as np
from gradio.utils import get_upload_folder

from spinecad import charts, ui_text
from spinecad.analysis import SliceAnalysis
from spinecad.compare_tab import CompareTab
from spinecad.examples import DEFAULT_EXAMPLES_DIR, read_example_index
from spinecad.explain import Heatmap, explain_slice, explanation_to_dict
from spinecad.imaging import ImageReadError, Slice, read_slice
from spinecad.imaging.limits import MAX_FILE_BYTES
from spinecad.labels import LEVELS, level_index
from spinecad.manifest import ManifestError, default_manifest_path
from spinecad.predict import Prediction, Predictor
from spinecad.preview import heatmap_gallery_html, preview_html
from spinecad.uploads import consume_upload

DEFAULT_LEVEL = "L4/L5"
PROBABILITIES = {"raw": False, "calibrated": True}  # the switch's values -> Predictor.predict(calibrated=...)
MODEL_CONCURRENCY = 1  # one GPU (or the CPU's cores): model runs queue one at a time
QUEUE_SIZE = 32
# Gradio's own cache (uploads it tracks, e.g. of requests refused before reaching us): swept every 5 minutes.
CACHE_SWEEP = (300, 300)
CSS = """
/* The uploaded file's name may identify a patient: never display it. */
#slice-upload .file-preview-holder, #predictions-upload .file-preview-holder { display: none; }
.spinecad-preview { margin: 0; text-align: center; }
.spinecad-preview img { width: 100%; max-width: 440px; border-radius: 6px; background: #000; }
#model-table .body-cell *, #model-table .header-cell *, #metrics-table .body-cell *, #metrics-table .header-cell * {
  font-family: var(--font) !important; font-variant-numeric: tabular-nums;
}
#metrics-table small { font-size: 0.85em; color: var(--body-text-color-subdued); }
.spinecad-preview figcaption, .spinecad-placeholder { font-size: 0.95rem; color: #555; margin-top: 0.4rem; }
.spinecad-placeholder { padding: 5rem 1rem; border: 2px dashed #ccc; border-radius: 6px; text-align: center; }
.spinecad-placeholder.spinecad-small { padding: 1.5rem 1rem; }
.spinecad-heatmaps { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 0.8rem; }
.spinecad-heatmap { margin: 0; text-align: center; }
.spinecad-heatmap img { width: 100%; border-radius: 4px; background: #000; }
.spinecad-heatmap figcaption { font-size: 0.9rem; line-height: 1.25; margin-top: 0.25rem; }
.spinecad-noheatmap { padding: 2rem 0.5rem; border: 1px dashed #ccc; border-radius: 4px; font-size: 0.85rem; }
.reading-aid { font-size: 0.95rem; color: var(--body-text-color-subdued); }
"""


def load_predictor() -> tuple[Predictor, str | None]:
    """Every model of the manifest on CUDA when present (ZeroGPU: at start, as it requires), else the CPU."""
    try:
        return Predictor.from_manifest(default_manifest_path()), None
    except ManifestError as error:
        return Predictor([]), f"{error} Run `python -m train --demo`, or point SPINECAD_MANIFEST at a manifest."


started = time.perf_counter()
PREDICTOR, MANIFEST_PROBLEM = load_predictor()
MANIFEST = PREDICTOR.manifest
DEMO = bool(MANIFEST and MANIFEST.demo)
EXAMPLES = read_example_index(DEFAULT_EXAMPLES_DIR)
UPLOAD_ROOT = get_upload_folder()
BANNER = ui_text.banner_markdown(
    title=MANIFEST.title if MANIFEST else "no manifest", demo=DEMO, models=PREDICTOR.models,
    failures=PREDICTOR.failures, device=str(PREDICTOR.device), manifest_root=MANIFEST.root if MANIFEST else None,
    problem=MANIFEST_PROBLEM,
)
print(f"SpineCAD: {len(PREDICTOR.models)} model(s) on {PREDICTOR.device}, {len(PREDICTOR.failures)} failed, "
      f"loaded in {time.perf_counter() - started:.1f} s", flush=True)


@spaces.GPU(duration=20)  # seconds of GPU asked per call: six backbones take well under one
def run_models(pixels: np.ndarray, calibrated: bool = False) -> Prediction:
    """Every model on one slice; ZeroGPU lends a GPU for the call, elsewhere the decorator does nothing."""
    return PREDICTOR.predict(pixels, calibrated=calibrated)


@spaces.GPU(duration=30)  # a forward and a backward pass per model
def run_explain(pixels: np.ndarray, level: str) -> list[Heatmap]:
    """Every model's heatmap for its grade at ``level``."""
    return explain_slice(PREDICTOR.models, pixels, level, device=PREDICTOR.device)


def analyse(data: bytes, probabilities: str = "raw") -> tuple[SliceAnalysis, str]:
    """Read a slice and run the models: the analysis and its preview; gr.Error with a plain message if unreadable."""
    image = read_image(data)
    analysis = SliceAnalysis(run_models(image.pixels, PROBABILITIES.get(probabilities, False)), image.facts,
                             demo=DEMO, pixels=image.pixels)
    return analysis, preview_html(image.pixels, f"{ui_text.PREVIEW_CAPTION} ({analysis.source})")


def read_image(data: bytes) -> Slice:
    """The slice in an upload, once models are there to read it; gr.Error with a plain message otherwise."""
    if not PREDICTOR.models:
        _refuse("No models are loaded, so nothing can be graded. " + (MANIFEST_PROBLEM or ""))
    try:
        return read_slice(data)
    except ImageReadError as error:
        _refuse(str(error))


def read_upload(upload: str | None) -> bytes:
    """The uploaded bytes; the upload itself is deleted from the server before anything else happens."""
    if not upload:
        _refuse("No file was uploaded.")
    try:
        return consume_upload(upload, UPLOAD_ROOT)
    except ImageReadError as error:
        _refuse(str(error))


def predict(upload: str | None, level: str, probabilities: str = "raw") -> dict:
    """Grade one slice (DICOM, PNG or JPEG) at one disc level with every model and their ensemble.

    ``probabilities``: "raw", or "calibrated" for each model's temperature-scaled probabilities.
    """
    data = read_upload(upload)
    level = _checked_level(level)
    if probabilities not in PROBABILITIES:
        _refuse(f"Unknown probabilities {probabilities!r}; expected 'raw' or 'calibrated'.")
    analysis, _ = analyse(data, probabilities)
    return analysis.to_dict(level)


def explain(upload: str | None, level: str) -> dict:
    """Each model's heatmap for the grade it gives at one disc level, as PNG overlays (data URIs) with their cost."""
    data = read_upload(upload)
    level = _checked_level(level)
    return explanation_to_dict(run_explain(read_image(data).pixels, level))


def _checked_level(level: str) -> str:
    try:
        return LEVELS[level_index(str(level))]
    except ValueError as error:
        _refuse(str(error))


def show(analysis: SliceAnalysis | None, level: str) -> tuple:
    """The result views for one level, read from a stored analysis: no model runs."""
    if analysis is None:
        return ui_text.RESULT_PLACEHOLDER, "", gr.Column(visible=False), None, None, None, None
    grade, probability = analysis.ensemble_grade(level)
    headline = ui_text.headline_markdown(level, grade, probability, analysis.agreeing_models(level),
                                         len(analysis.prediction.outputs))
    if analysis.prediction.calibrated:
        headline += "\n\n" + ui_text.CALIBRATED_NOTE
    if all(output.from_cache for output in analysis.prediction.outputs):
        headline += "\n\n" + ui_text.CACHED_NOTE
    return (headline, ui_text.warnings_markdown(analysis.warnings), gr.Column(visible=True),
            charts.probability_figure(analysis.prediction, level), analysis.probability_table(level),
            charts.grade_grid_figure(analysis.prediction, level), analysis.to_dict(level))


def on_upload(upload: str | None, level: str, probabilities: str) -> tuple:
    """UI upload: analyse, store, show; the upload box is cleared so the file name is not left on screen."""
    try:
        analysis, preview = analyse(read_upload(upload), probabilities)
    except gr.Error as error:
        return _refused_views(error)
    return (analysis, preview, None, *show(analysis, level), ui_text.HEATMAP_PLACEHOLDER)


def on_example(label: str, level: str, probabilities: str) -> tuple:
    """An example button: the committed file is read in place (nothing is copied or deleted)."""
    example = next((e for e in EXAMPLES if e.label == label), None)
    try:
        if example is None:
            _refuse("That example is not available.")
        analysis, preview = analyse((DEFAULT_EXAMPLES_DIR / example.file).read_bytes(), probabilities)
    except gr.Error as error:
        return _refused_views(error)
    return (analysis, preview, None, *show(analysis, level), ui_text.HEATMAP_PLACEHOLDER)


def on_probabilities(analysis: SliceAnalysis | None, level: str, probabilities: str) -> tuple:
    """The raw/calibrated switch: the heads run again on the cached features; the backbones do not."""
    if analysis is None or analysis.pixels is None:
        return (analysis, *show(analysis, level))
    prediction = run_models(analysis.pixels, PROBABILITIES.get(probabilities, False))
    switched = SliceAnalysis(prediction, analysis.facts, demo=analysis.demo, pixels=analysis.pixels)
    return (switched, *show(switched, level))


def on_explain(analysis: SliceAnalysis | None, level: str) -> str:
    """The Explain button: every model's heatmap at the shown level, side by side."""
    if analysis is None or analysis.pixels is None:
        return ui_text.HEATMAP_PLACEHOLDER
    return heatmap_gallery_html(run_explain(analysis.pixels, level))


def _refuse(message: str) -> None:
    # The visitor reads our own sentence; the server log gets no traceback for a file that is simply unreadable.
    raise gr.Error(message, title="SpineCAD", print_exception=False)


def _refused_views(error: gr.Error) -> tuple:
    return (None, ui_text.PREVIEW_PLACEHOLDER, None, f"### ✖ Cannot grade this file\n\n{error.message}", "",
            gr.Column(visible=False), None, None, None, None, ui_text.HEATMAP_PLACEHOLDER)


with gr.Blocks(title="SpineCAD", analytics_enabled=False, delete_cache=CACHE_SWEEP) as demo:
    gr.Markdown(BANNER, elem_id="banner")
    with gr.Tabs():
        with gr.Tab("Predict", id="predict"):
            gr.Markdown(ui_text.PREDICT_INTRO)
            analysis_state = gr.State(None)
            result_json = gr.JSON(label="predict API result", elem_id="result-json", render=False)
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=320):
                    upload = gr.File(label="1. Upload one slice", type="filepath", elem_id="slice-upload",
                                     height=120)
                    gr.Markdown(ui_text.UPLOAD_HELP)
                    example_label = gr.Textbox(visible=False)
                    examples_box = gr.Column()
                    level = gr.Radio(list(LEVELS), value=DEFAULT_LEVEL, label="2. Disc level of the slice",
                                     elem_id="level-picker")
                    probabilities = gr.Radio([("Raw", "raw"), ("Calibrated", "calibrated")], value="raw",
                                             label="Probabilities", info=ui_text.PROBABILITIES_HELP,
                                             elem_id="probabilities-picker")
                    preview = gr.HTML(ui_text.PREVIEW_PLACEHOLDER, elem_id="slice-preview")
                with gr.Column(scale=3, min_width=420):
                    headline = gr.Markdown(ui_text.RESULT_PLACEHOLDER, elem_id="headline")
                    warnings = gr.Markdown("", elem_id="slice-warnings")
                    with gr.Column(visible=False) as results_box:  # no empty charts before the first result
                        probability_plot = gr.Plot(show_label=False, elem_id="probability-plot")
                        table = gr.Dataframe(label="Every model at this level", interactive=False, wrap=True,
                                             column_widths=["23%", "15%", "13%", "12%", "14%", "11%", "12%"],
                                             elem_id="model-table")
                        grid_plot = gr.Plot(show_label=False, elem_id="grade-grid")
                        gr.Markdown(ui_text.LEVEL_SWITCH_NOTE)
                        gr.Markdown("### Where did each model look?")
                        explain_button = gr.Button("Explain: show each model's heatmap at this level",
                                                   variant="secondary", elem_id="explain-button")
                        heatmaps = gr.HTML(ui_text.HEATMAP_PLACEHOLDER, elem_id="heatmap-gallery")
                        gr.Markdown(ui_text.HEATMAP_EXPLAINED)
            views = [headline, warnings, results_box, probability_plot, table, grid_plot, result_json]
            # Every event that runs the models shares one queue slot per GPU.
            model_run = {"concurrency_limit": MODEL_CONCURRENCY, "concurrency_id": "models"}
            with examples_box:
                if EXAMPLES:
                    examples = gr.Examples(
                        examples=[[e.label, e.level] for e in EXAMPLES], inputs=[example_label, level],
                        cache_examples=False, label="… or try an example (synthetic phantom; true grade in brackets)",
                        example_labels=[f"{e.label} [{e.true_grade}]" for e in EXAMPLES], examples_per_page=12,
                        api_visibility="private",
                    )
                    # Run on click in the models' queue (gr.Examples' own run_on_click would bypass its limit).
                    examples.load_input_event.then(on_example, [example_label, level, probabilities],
                                                   [analysis_state, preview, upload, *views, heatmaps],
                                                   api_visibility="private", **model_run)
            with gr.Accordion("What the grades mean, and what this app is not", open=True):
                gr.Markdown(ui_text.GRADES_EXPLAINED)
            with gr.Accordion("The result as JSON (what the `predict` API returns)", open=False):
                result_json.render()
                gr.Markdown(ui_text.API_HELP)

            upload.upload(on_upload, [upload, level, probabilities],
                          [analysis_state, preview, upload, *views, heatmaps], api_visibility="private", **model_run)
            level.change(show, [analysis_state, level], views, api_visibility="private")
            level.change(lambda: ui_text.HEATMAP_PLACEHOLDER, None, heatmaps, api_visibility="private")
            probabilities.change(on_probabilities, [analysis_state, level, probabilities], [analysis_state, *views],
                                 api_visibility="private", **model_run)
            explain_button.click(on_explain, [analysis_state, level], heatmaps, api_visibility="private",
                                 **model_run)
            # The scripted entry points: hidden inputs, so the API owns its request and validates the level itself.
            api_upload, api_level = gr.File(visible=False), gr.Textbox(visible=False)
            api_probabilities = gr.Textbox(value="raw", visible=False)
            gr.Button(visible=False).click(predict, [api_upload, api_level, api_probabilities],
                                           gr.JSON(visible=False), api_name="predict", **model_run)
            gr.Button(visible=False).click(explain, [api_upload, api_level], gr.JSON(visible=False),
                                           api_name="explain", **model_run)

        with gr.Tab("Compare", id="compare") as compare_tab:
            CompareTab(MANIFEST.evaluation_dir if MANIFEST else None,
                       [m.key for m in PREDICTOR.models], UPLOAD_ROOT).render(compare_tab)


if __name__ == "__main__":
    demo.queue(default_concurrency_limit=4, max_size=QUEUE_SIZE).launch(
        max_file_size=MAX_FILE_BYTES, css=CSS, theme=gr.themes.Soft(), footer_links=["api"], ssr_mode=False,
    )
