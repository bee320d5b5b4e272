"""The app's Compare tab: Table 2 with intervals and calibration, ROC/PR curves, confusion matrices, reliability
diagrams and training curves per split, the paired-bootstrap matrix of differences between models, plus an optional
outside model from an uploaded Kaggle-format predictions file; and, when the evaluation holds one, the disc-level
localiser's error table and its points on a few test slices. Each chart has its reading aid beside it.

Reading and scoring are ``spinecad.evaluation.comparison``'s, figures ``spinecad.ui.charts``'; this module lays them
out. Every handler returns a dict keyed by component.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gradio as gr
import pandas as pd

from spinecad.evaluation import comparison
from spinecad.evaluation import store as evaluation
from spinecad.evaluation.scoring import ScoringError
from spinecad.imaging import ImageReadError
from spinecad.ui import charts, localizer_view
from spinecad.ui import text as ui_text
from spinecad.ui.tables import metrics_table, paper_table, two_line_cells
from spinecad.ui.uploads import consume_upload

PRIVATE = {"api_visibility": "private"}


class CompareTab:
    """Builds the Compare tab's components and events inside the current ``gr.Blocks``."""

    def __init__(self, evaluation_root: Path | None, loaded_keys: Sequence[str], upload_root: str | Path,
                 localizer_key: str | None = None) -> None:
        self.root = evaluation_root
        # The localiser shown: the one named, else the first whose artefacts the evaluation holds.
        self.localizer_key = localizer_key or next(iter(localizer_view.localizer_keys(evaluation_root)), None)
        self._localizer_figure = None
        self.upload_root = upload_root
        self.problem: str | None = None
        self._columns: dict[str, list[comparison.ColumnResults]] = {}
        # (split, confusion model) -> table and figures without an outside model: drawn once, shown many times.
        self._figures: dict[tuple[str, str], tuple] = {}
        self._history = None
        self._significance = None
        self.keys: list[str] = []
        self.splits: tuple[str, ...] = ()
        self.demo = False
        if evaluation_root is None:
            self.problem = "The model manifest names no evaluation folder, so there is nothing to compare."
            return
        try:
            summary = evaluation.load_summary(evaluation_root)
            self.keys = comparison.shown_model_keys(evaluation_root, loaded_keys)
        except evaluation.ArtefactError as error:
            self.problem = f"The evaluation artefacts cannot be read: {error}"
            return
        self.splits, self.demo = summary.splits, summary.demo

    def columns(self, split: str) -> list[comparison.ColumnResults]:
        """The stored results of the shown models on ``split`` (read once, then kept)."""
        if split not in self._columns:
            try:
                self._columns[split] = comparison.load_columns(self.root, split, self.keys)
            except evaluation.ArtefactError as error:
                raise gr.Error(f"The evaluation artefacts cannot be read: {error}", print_exception=False) from None
        return self._columns[split]

    def default_confusion(self, split: str) -> str:
        """The ensemble's confusion matrix first (the evaluation lists it last)."""
        return self.columns(split)[-1].name

    def views(self, split: str, outside: pd.DataFrame | None, confusion_name: str | None) -> dict:
        """Table, ROC, PR, confusion picker and figure, reliability and the outside model's note for ``split``."""
        columns, note = list(self.columns(split)), ""
        if outside is not None:
            try:
                n_boot = columns[0].intervals.n_boot if columns[0].intervals else 1000
                labels = comparison.split_labels(self.root, split, self.keys[0])
                columns.append(comparison.score_outside(outside, labels, name=ui_text.OUTSIDE_NAME, n_boot=n_boot))
                note = f"**{ui_text.OUTSIDE_NAME}**: {columns[-1].note}"
            except ScoringError as error:
                note = f"✖ {ui_text.OUTSIDE_NAME} cannot be scored on this split: {error}"
        names = [c.name for c in columns]
        chosen = confusion_name if confusion_name in names else self.default_confusion(split)
        stored_only = len(columns) == len(self.columns(split))  # no outside column: the drawing can be kept
        figures = self._figures.get((split, chosen)) if stored_only else None
        if figures is None:
            figures = self._draw(columns, split, chosen)
            if stored_only:
                self._figures[(split, chosen)] = figures
        table, roc, pr, matrix, reliability = figures
        return {self.metrics: table, self.roc_plot: roc, self.pr_plot: pr,
                self.confusion_picker: gr.update(choices=names, value=chosen), self.confusion_plot: matrix,
                self.reliability_plot: reliability, self.outside_note: note, **self.localizer_views(split)}

    def localizer_views(self, split: str) -> dict:
        """The localiser's error table and note for ``split`` (nothing when the evaluation holds no localiser)."""
        if self.localizer_key is None:
            return {}
        try:
            document = evaluation.load_localizer_metrics(self.root, self.localizer_key, split)
        except evaluation.ArtefactError as error:
            return {self.localizer_table: None,
                    self.localizer_note: f"✖ The localiser's results cannot be read: {error}"}
        return {self.localizer_table: localizer_view.error_table(document),
                self.localizer_note: localizer_view.slice_rule_note(document)}

    def localizer_figure(self):
        """Predicted against labelled points on the stored test slices (drawn once)."""
        if self._localizer_figure is None:
            try:
                document = evaluation.load_localizer_metrics(self.root, self.localizer_key, "test")
                self._localizer_figure = localizer_view.points_figure(self.root, self.localizer_key, "test", document)
            except evaluation.ArtefactError as error:
                self._localizer_figure = charts.message_figure(f"The localiser's test results cannot be read: {error}")
        return self._localizer_figure

    def _draw(self, columns: list[comparison.ColumnResults], split: str, chosen: str) -> tuple:
        confusion = next(c for c in columns if c.name == chosen)
        title = f"{chosen} on the {ui_text.SPLIT_NAMES.get(split, split).lower()} split"
        return (two_line_cells(metrics_table(columns)), charts.roc_figure(columns),
                charts.pr_figure(columns), charts.confusion_figure(confusion.confusion, title),
                charts.reliability_figure(columns))

    def significance(self) -> tuple:
        """The matrix of paired differences (drawn once) and a line on how it was computed."""
        if self._significance is None:
            try:
                matrices, facts = comparison.load_difference_matrices(self.root, self.keys)
            except evaluation.ArtefactError as error:
                missing = not evaluation.significance_path(self.root).is_file()
                self._significance = (charts.message_figure(
                    "No significance results: re-run the evaluation (python -m train ...)." if missing
                    else "The significance results cannot be read."), "" if missing else f"✖ {error}")
            else:
                split_name = ui_text.SPLIT_NAMES.get(facts.split, facts.split).lower()
                note = (f"*{facts.n_boot} paired resamples of the {facts.n_studies} patients of the "
                        f"{split_name} split, seed {facts.seed}; {100 * (1 - facts.alpha):.0f}% percentile "
                        "intervals.*")
                self._significance = (charts.significance_figure(matrices, split_name), note)
        return self._significance

    def opened(self, split: str, outside: pd.DataFrame | None, confusion_name: str | None) -> dict:
        """Everything the tab shows, drawn when it is opened (so startup stays fast and Plotly sizes to view)."""
        if self._history is None:
            self._history = charts.history_figure(comparison.load_histories(self.root, self.keys))
        significance, note = self.significance()
        localizer = {self.localizer_plot: self.localizer_figure()} if self.localizer_key else {}
        return {**self.views(split, outside, confusion_name), self.history_plot: self._history,
                self.significance_plot: significance, self.significance_note: note, **localizer}

    def add_outside(self, upload: str | None, split: str, confusion_name: str | None) -> dict:
        """Read (and delete) an uploaded predictions file and show it as one more column."""
        try:
            if not upload:
                raise ScoringError("No file was uploaded.")
            outside = comparison.read_outside_predictions(consume_upload(upload, self.upload_root))
        except (ImageReadError, ScoringError) as error:
            return {**self.views(split, None, confusion_name), self.outside_state: None, self.outside_upload: None,
                    self.outside_note: f"✖ {error}"}
        return {**self.views(split, outside, confusion_name), self.outside_state: outside, self.outside_upload: None}

    def remove_outside(self, split: str, confusion_name: str | None) -> dict:
        """Drop the uploaded model's column."""
        return {**self.views(split, None, confusion_name), self.outside_state: None}

    def render(self, tab: gr.Tab) -> None:
        """Lay the tab out inside ``tab`` and wire its events."""
        if self.problem:
            gr.Markdown(f"### Nothing to compare yet\n\n{self.problem}")
            return
        intro = ui_text.COMPARE_INTRO + (ui_text.COMPARE_DEMO_NOTE if self.demo else "")
        gr.Markdown(intro)
        default_split = "test" if "test" in self.splits else self.splits[0]
        split = gr.Radio([(ui_text.SPLIT_NAMES.get(s, s), s) for s in self.splits], value=default_split,
                         label="Split", elem_id="split-picker")
        self.metrics = gr.Dataframe(label="Table 2: every model on this split (95% interval under each value)",
                                    interactive=False, wrap=True, datatype="markdown", max_height=2000,
                                    elem_id="metrics-table")
        with gr.Accordion("How to read these numbers", open=False):
            gr.Markdown(ui_text.METRICS_EXPLAINED)
        with gr.Accordion(ui_text.PAPER_TABLE_TITLE, open=False):
            gr.Markdown(ui_text.PAPER_TABLE_NOTE)
            gr.Dataframe(paper_table(), interactive=False, wrap=True, datatype="markdown", max_height=2000,
                         elem_id="paper-table")
        with gr.Row():
            self.outside_upload = gr.File(label="Add your own model (Kaggle-format CSV)", file_types=[".csv"],
                                          type="filepath", height=110, elem_id="predictions-upload")
            with gr.Column():
                gr.Markdown(ui_text.OUTSIDE_HELP)
                self.outside_note = gr.Markdown("", elem_id="outside-note")
                remove = gr.Button("Remove the uploaded model", size="sm")
        self.outside_state = gr.State(None)
        gr.Markdown(f"### ROC curves\n{ui_text.CURVES_EXPLAINED}")
        self.roc_plot = _chart_with_reading_aid("roc-plot", ui_text.ROC_EXPLAINED)
        gr.Markdown("### Precision-recall curves")
        self.pr_plot = _chart_with_reading_aid("pr-plot", ui_text.PR_EXPLAINED)
        gr.Markdown("### Confusion matrix")
        self.confusion_picker = gr.Dropdown(label="Model", elem_id="confusion-picker")
        self.confusion_plot = _chart_with_reading_aid("confusion-plot", ui_text.CONFUSION_EXPLAINED)
        gr.Markdown("### Calibration: can the percentages be taken at their word?")
        self.reliability_plot = _chart_with_reading_aid("reliability-plot", ui_text.RELIABILITY_EXPLAINED)
        gr.Markdown("### Is one model really better than another?")
        self.significance_plot = _chart_with_reading_aid("significance-plot", ui_text.SIGNIFICANCE_EXPLAINED)
        self.significance_note = gr.Markdown("", elem_id="significance-note")
        gr.Markdown("### Training curves")
        self.history_plot = _chart_with_reading_aid("history-plot", ui_text.HISTORY_EXPLAINED)
        views = [self.metrics, self.roc_plot, self.pr_plot, self.confusion_picker, self.confusion_plot,
                 self.reliability_plot, self.outside_note]
        opened = [self.history_plot, self.significance_plot, self.significance_note]
        if self.localizer_key:
            gr.Markdown(f"### Disc-level localiser: where it puts each level\n{localizer_view.EXPLAINED}")
            self.localizer_table = gr.Dataframe(label="Point error per level on this split", interactive=False,
                                                wrap=True, elem_id="localizer-table")
            self.localizer_note = gr.Markdown("", elem_id="localizer-note")
            self.localizer_plot = gr.Plot(show_label=False, elem_id="localizer-plot")
            views += [self.localizer_table, self.localizer_note]
            opened.append(self.localizer_plot)

        inputs = [split, self.outside_state, self.confusion_picker]
        tab.select(self.opened, inputs, [*views, *opened], **PRIVATE)
        split.change(self.views, inputs, views, **PRIVATE)
        self.outside_upload.upload(self.add_outside, [self.outside_upload, split, self.confusion_picker],
                                   [self.outside_state, self.outside_upload, *views], **PRIVATE)
        remove.click(self.remove_outside, [split, self.confusion_picker], [self.outside_state, *views], **PRIVATE)
        self.confusion_picker.input(self.views, inputs, views, **PRIVATE)


def _chart_with_reading_aid(elem_id: str, reading_aid: str) -> gr.Plot:
    """A chart with its two or three sentences on how to read it beside it."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=520):
            plot = gr.Plot(show_label=False, elem_id=elem_id)
        with gr.Column(scale=1, min_width=220):
            gr.Markdown(reading_aid, elem_classes=["reading-aid"])
    return plot
