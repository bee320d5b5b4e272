"""The Predict tab and the scripted ``/predict`` and ``/explain`` entry points: one slice, six models, heatmaps.

Uploads are read into memory and deleted at once; the slice preview and its heatmaps are inline images, so no copy
of the slice is written to disk. Every handler returns a dict keyed by component, so it updates only what it names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import gradio as gr
import numpy as np
import spaces

from spinecad.examples import Example
from spinecad.imaging import ImageReadError, Slice, read_slice
from spinecad.inference.heatmaps import Heatmap, explain_slice
from spinecad.inference.predictor import Prediction, Predictor
from spinecad.labels import LEVELS, level_index
from spinecad.ui import charts
from spinecad.ui import text as ui_text
from spinecad.ui.analysis import SliceAnalysis, explanation_to_dict
from spinecad.ui.html import heatmap_gallery_html, preview_html
from spinecad.ui.tables import probability_table
from spinecad.ui.uploads import consume_upload

DEFAULT_LEVEL = "L4/L5"
PROBABILITIES = {"raw": False, "calibrated": True}  # the switch's values -> Predictor.predict(calibrated=...)
# Every event that runs the models shares one queue slot: one GPU, or the CPU's cores.
MODEL_RUN = {"concurrency_limit": 1, "concurrency_id": "models"}
PRIVATE = {"api_visibility": "private"}


def refuse(message: str) -> NoReturn:
    """Stop a request with a plain sentence for the visitor; the server log gets no traceback for it."""
    raise gr.Error(message, title="SpineCAD", print_exception=False)


class PredictTab:
    """The Predict tab's components and events, built inside the current ``gr.Blocks``."""

    def __init__(self, predictor: Predictor, *, demo: bool, examples: list[Example], examples_dir: Path | None,
                 upload_root: str | Path, problem: str | None = None) -> None:
        self.predictor, self.demo, self.problem = predictor, demo, problem
        self.examples, self.examples_dir, self.upload_root = examples, examples_dir, upload_root
        # On a ZeroGPU Space each call borrows a GPU for the seconds asked; elsewhere the decorator does nothing.
        self.run_models: Callable[..., Prediction] = spaces.GPU(duration=20)(self._run_models)
        self.run_explain: Callable[..., list[Heatmap]] = spaces.GPU(duration=30)(self._run_explain)

    # ---- the models ------------------------------------------------------------------------------------------

    def _run_models(self, pixels: np.ndarray, calibrated: bool = False) -> Prediction:
        return self.predictor.predict(pixels, calibrated=calibrated)

    def _run_explain(self, pixels: np.ndarray, level: str) -> list[Heatmap]:
        return explain_slice(self.predictor.models, pixels, level, device=self.predictor.device)

    def analyse(self, data: bytes, probabilities: str = "raw") -> SliceAnalysis:
        """Read a slice and run the models; gr.Error with a plain message when it cannot be graded."""
        image = self.read_image(data)
        prediction = self.run_models(image.pixels, PROBABILITIES.get(probabilities, False))
        return SliceAnalysis(prediction, image.facts, demo=self.demo, pixels=image.pixels)

    def read_image(self, data: bytes) -> Slice:
        """The slice in an upload, once models are there to read it."""
        if not self.predictor.models:
            refuse("No models are loaded, so nothing can be graded. " + (self.problem or ""))
        try:
            return read_slice(data)
        except ImageReadError as error:
            refuse(str(error))

    def read_upload(self, upload: str | None) -> bytes:
        """The uploaded bytes; the upload itself is deleted from the server before anything else happens."""
        if not upload:
            refuse("No file was uploaded.")
        try:
            return consume_upload(upload, self.upload_root)
        except ImageReadError as error:
            refuse(str(error))

    # ---- the scripted API ------------------------------------------------------------------------------------

    def predict(self, upload: str | None, level: str, probabilities: str = "raw") -> dict:
        """Grade one slice (DICOM, PNG or JPEG) at one disc level with every model and their ensemble.

        ``probabilities``: "raw", or "calibrated" for each model's temperature-scaled probabilities.
        """
        data = self.read_upload(upload)
        level = checked_level(level)
        if probabilities not in PROBABILITIES:
            refuse(f"Unknown probabilities {probabilities!r}; expected 'raw' or 'calibrated'.")
        return self.analyse(data, probabilities).to_dict(level)

    def explain(self, upload: str | None, level: str) -> dict:
        """Each model's heatmap for the grade it gives at one disc level, as PNG overlays (data URIs)."""
        data = self.read_upload(upload)
        level = checked_level(level)
        return explanation_to_dict(self.run_explain(self.read_image(data).pixels, level))

    # ---- the page --------------------------------------------------------------------------------------------

    def views(self, analysis: SliceAnalysis | None, level: str) -> dict:
        """The result views for one level, read from a stored analysis: no model runs."""
        if analysis is None:  # nothing to show: every view is emptied, none keeps an earlier slice's result
            return {self.headline: ui_text.RESULT_PLACEHOLDER, self.warnings: "",
                    self.results_box: gr.Column(visible=False), self.probability_plot: None, self.table: None,
                    self.grid_plot: None, self.result_json: None}
        result = analysis.to_dict(level)
        grade, probability = analysis.ensemble_grade(level)
        headline = ui_text.headline_markdown(level, grade, probability, analysis.agreeing_models(level),
                                             len(analysis.prediction.outputs),
                                             unfamiliar=bool(analysis.prediction.unfamiliar),
                                             split=analysis.prediction.split(level))
        if analysis.prediction.calibrated:
            headline += "\n\n" + ui_text.CALIBRATED_NOTE
        if all(output.from_cache for output in analysis.prediction.outputs):
            headline += "\n\n" + ui_text.CACHED_NOTE
        return {
            self.headline: headline, self.warnings: ui_text.warnings_markdown(analysis.warnings),
            self.results_box: gr.Column(visible=True),
            self.probability_plot: charts.probability_figure(analysis.prediction, level),
            self.table: probability_table(result), self.grid_plot: charts.grade_grid_figure(analysis.prediction, level),
            self.result_json: result,
        }

    def on_upload(self, upload: str | None, level: str, probabilities: str) -> dict:
        """UI upload: analyse, store, show; the upload box is cleared so the file name is not left on screen."""
        try:
            return self._shown(self.analyse(self.read_upload(upload), probabilities), level)
        except gr.Error as error:
            return self._refused(error)

    def on_example(self, label: str, level: str, probabilities: str) -> dict:
        """An example button: the committed file is read in place (nothing is copied or deleted)."""
        example = next((e for e in self.examples if e.label == label), None)
        try:
            if example is None or self.examples_dir is None:
                refuse("That example is not available.")
            return self._shown(self.analyse((self.examples_dir / example.file).read_bytes(), probabilities), level)
        except gr.Error as error:
            return self._refused(error)

    def on_probabilities(self, analysis: SliceAnalysis | None, level: str, probabilities: str) -> dict:
        """The raw/calibrated switch: the heads run again on the cached features; the backbones do not."""
        if analysis is None or analysis.pixels is None:
            return self.views(analysis, level)
        prediction = self.run_models(analysis.pixels, PROBABILITIES.get(probabilities, False))
        switched = SliceAnalysis(prediction, analysis.facts, demo=analysis.demo, pixels=analysis.pixels)
        return {self.state: switched, **self.views(switched, level)}

    def on_explain(self, analysis: SliceAnalysis | None, level: str) -> str:
        """The Explain button: every model's heatmap at the shown level, side by side."""
        if analysis is None or analysis.pixels is None:
            return ui_text.HEATMAP_PLACEHOLDER
        return heatmap_gallery_html(self.run_explain(analysis.pixels, level))

    def _shown(self, analysis: SliceAnalysis, level: str) -> dict:
        preview = preview_html(analysis.pixels, f"{ui_text.PREVIEW_CAPTION} ({analysis.source})")
        return {self.state: analysis, self.preview: preview, self.upload: None, self.heatmaps:
                ui_text.HEATMAP_PLACEHOLDER, **self.views(analysis, level)}

    def _refused(self, error: gr.Error) -> dict:
        return {**self.views(None, DEFAULT_LEVEL), self.state: None, self.preview: ui_text.PREVIEW_PLACEHOLDER,
                self.upload: None, self.headline: f"### ✖ Cannot grade this file\n\n{error.message}",
                self.heatmaps: ui_text.HEATMAP_PLACEHOLDER}

    def render(self) -> None:
        """Lay the tab out and wire its events (call inside ``gr.Tab``)."""
        gr.Markdown(ui_text.PREDICT_INTRO)
        self.state = gr.State(None)
        self.result_json = gr.JSON(label="predict API result", elem_id="result-json", render=False)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                self.upload = gr.File(label="1. Upload one slice", type="filepath", elem_id="slice-upload",
                                      height=120)
                gr.Markdown(ui_text.UPLOAD_HELP)
                example_label = gr.Textbox(visible=False)
                examples_box = gr.Column()
                level = gr.Radio(list(LEVELS), value=DEFAULT_LEVEL, label="2. Disc level of the slice",
                                 elem_id="level-picker")
                probabilities = gr.Radio([("Raw", "raw"), ("Calibrated", "calibrated")], value="raw",
                                         label="Probabilities", info=ui_text.PROBABILITIES_HELP,
                                         elem_id="probabilities-picker")
                self.preview = gr.HTML(ui_text.PREVIEW_PLACEHOLDER, elem_id="slice-preview")
            with gr.Column(scale=3, min_width=420):
                self.headline = gr.Markdown(ui_text.RESULT_PLACEHOLDER, elem_id="headline")
                self.warnings = gr.Markdown("", elem_id="slice-warnings")
                with gr.Column(visible=False) as self.results_box:  # no empty charts before the first result
                    self.probability_plot = gr.Plot(show_label=False, elem_id="probability-plot")
                    self.table = gr.Dataframe(label="Every model at this level", interactive=False, wrap=True,
                                              column_widths=["23%", "15%", "13%", "12%", "14%", "11%", "12%"],
                                              elem_id="model-table")
                    self.grid_plot = gr.Plot(show_label=False, elem_id="grade-grid")
                    gr.Markdown(ui_text.LEVEL_SWITCH_NOTE)
                    gr.Markdown("### Where did each model look?")
                    explain_button = gr.Button("Explain: show each model's heatmap at this level",
                                               variant="secondary", elem_id="explain-button")
                    self.heatmaps = gr.HTML(ui_text.HEATMAP_PLACEHOLDER, elem_id="heatmap-gallery")
                    gr.Markdown(ui_text.HEATMAP_EXPLAINED)
        views = [self.headline, self.warnings, self.results_box, self.probability_plot, self.table, self.grid_plot,
                 self.result_json]
        shown = [self.state, self.preview, self.upload, self.heatmaps, *views]
        with examples_box:
            if self.examples:
                examples = gr.Examples(
                    examples=[[e.label, e.level] for e in self.examples], inputs=[example_label, level],
                    cache_examples=False, label="… or try an example (synthetic phantom; true grade in brackets)",
                    example_labels=[f"{e.label} [{e.true_grade}]" for e in self.examples], examples_per_page=12,
                    api_visibility="private",
                )
                # Run on click in the models' queue (gr.Examples' own run_on_click would bypass its limit).
                examples.load_input_event.then(self.on_example, [example_label, level, probabilities], shown,
                                               **PRIVATE, **MODEL_RUN)
        with gr.Accordion("What the grades mean, and what this app is not", open=True):
            gr.Markdown(ui_text.GRADES_EXPLAINED)
        with gr.Accordion("The result as JSON (what the `predict` API returns)", open=False):
            self.result_json.render()
            gr.Markdown(ui_text.API_HELP)

        self.upload.upload(self.on_upload, [self.upload, level, probabilities], shown, **PRIVATE, **MODEL_RUN)
        level.change(self.views, [self.state, level], views, **PRIVATE)
        level.change(lambda: ui_text.HEATMAP_PLACEHOLDER, None, self.heatmaps, **PRIVATE)
        probabilities.change(self.on_probabilities, [self.state, level, probabilities], [self.state, *views],
                             **PRIVATE, **MODEL_RUN)
        explain_button.click(self.on_explain, [self.state, level], self.heatmaps, **PRIVATE, **MODEL_RUN)
        # The scripted entry points: hidden inputs, so the API owns its request and validates the level itself.
        api_upload, api_level = gr.File(visible=False), gr.Textbox(visible=False)
        api_probabilities = gr.Textbox(value="raw", visible=False)
        gr.Button(visible=False).click(self.predict, [api_upload, api_level, api_probabilities],
                                       gr.JSON(visible=False), api_name="predict", **MODEL_RUN)
        gr.Button(visible=False).click(self.explain, [api_upload, api_level], gr.JSON(visible=False),
                                       api_name="explain", **MODEL_RUN)


def checked_level(level: str) -> str:
    """The level as LEVELS spells it; gr.Error naming the valid levels otherwise."""
    try:
        return LEVELS[level_index(str(level))]
    except ValueError as error:
        refuse(str(error))
