"""The Study tab and the scripted ``/predict_study`` entry point: a whole study, five levels, six models.

The upload is read into memory and deleted at once; the study stays in the visitor's session state (in memory,
dropped after ``SESSION_TTL_S``), and every image is an inline PNG.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import spaces

from spinecad.imaging import ImageReadError
from spinecad.inference.localizing import Localizer
from spinecad.inference.predictor import Predictor
from spinecad.inference.study import (
    LevelHeatmaps,
    Localised,
    StudyGrades,
    explain_study,
    grade_study,
    localise,
    place_with_localiser,
    study_warnings,
)
from spinecad.labels import LEVELS
from spinecad.study import Study, StudyError, parse_levels, read_study
from spinecad.study.archive import MAX_UPLOAD_BYTES, Member
from spinecad.ui import study_text
from spinecad.ui import text as ui_text
from spinecad.ui.predict_tab import MODEL_RUN, PRIVATE, PROBABILITIES, refuse
from spinecad.ui.study_view import (
    CLICK_JS,
    axial_html,
    level_heatmaps_html,
    profile_figure,
    sagittal_html,
    study_table,
)
from spinecad.ui.uploads import consume_upload, remove_upload

SESSION_TTL_S = 1800  # a visitor's study is dropped from memory this long after its last use


@dataclass
class StudySession:
    """One visitor's study and the level requests made on it so far (JSON form, as /predict_study takes them)."""

    study: Study
    requests: dict[str, dict] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # the localiser's reasons for the levels it left out
    graded: dict[str, dict] | None = None  # the requests of the last grading: what Explain explains


class StudyTab:
    """The Study tab's components and events, built inside the current ``gr.Blocks``."""

    def __init__(self, predictor: Predictor, *, upload_root: str | Path, problem: str | None = None,
                 localizer: Localizer | None = None, localizer_problem: str = "") -> None:
        self.predictor, self.upload_root, self.problem = predictor, upload_root, problem
        self.localizer, self.localizer_problem = localizer, localizer_problem
        self.run_grading: Callable[..., StudyGrades] = spaces.GPU(duration=120)(self._run_grading)
        self.run_explain: Callable[..., tuple[list[LevelHeatmaps], list[str]]] = spaces.GPU(duration=120)(
            self._run_explain)

    # ---- the library ----------------------------------------------------------------------------------------

    def _run_grading(self, study: Study, requests: dict, calibrated: bool, progress=None, *,
                     auto: bool = False) -> StudyGrades:
        """``auto``: the localiser places the levels the requests leave out (the page has placed them already)."""
        localised = self.localise(study) if auto else Localised()
        placements = place_with_localiser(study, parse_levels(requests), localised)
        return grade_study(self.predictor, study, placements, calibrated=calibrated, progress=progress)

    def _run_explain(self, study: Study, requests: dict, notes: dict[str, str]) -> tuple[list[LevelHeatmaps],
                                                                                        list[str]]:
        placements = place_with_localiser(study, parse_levels(requests), Localised(notes=notes))
        return explain_study(self.predictor.models, placements, device=self.predictor.device)

    def localise(self, study: Study) -> Localised:
        return localise(self.localizer, study, problem=self.localizer_problem)

    def read(self, uploads: str | list[str] | None) -> Study:
        """The study in one or more uploads, each deleted from the server before anything else happens."""
        paths = [uploads] if isinstance(uploads, str) else list(uploads or [])
        if not paths:
            refuse("No file was uploaded.")
        members = []
        try:
            for path in paths:  # every upload is consumed (deleted), even when an earlier one is refused
                members.append(Member(Path(path).name, consume_upload(path, self.upload_root, limit=MAX_UPLOAD_BYTES)))
        except ImageReadError as error:
            for path in paths:
                remove_upload(path, self.upload_root)  # the ones not read yet go too
            refuse(str(error))
        try:
            return read_study(members)
        except StudyError as error:
            refuse(str(error))

    def grade(self, study: Study, requests: dict, probabilities: str, progress=None, *, auto: bool = False) -> dict:
        if not self.predictor.models:
            refuse("No models are loaded, so nothing can be graded. " + (self.problem or ""))
        try:
            return self.run_grading(study, requests, PROBABILITIES.get(probabilities, False), progress,
                                    auto=auto).to_dict()
        except StudyError as error:
            refuse(str(error))

    # ---- the scripted API -----------------------------------------------------------------------------------

    def predict_study(self, upload: str | list[str] | None, levels: str = "{}", probabilities: str = "raw") -> dict:
        """Grade a study (a zip of DICOM files): each level from a sagittal point or a chosen axial instance.

        ``levels``: JSON, ``{}`` or per level ``{"sagittal_instance": N, "x": px, "y": px}`` or
        ``{"axial_instance": N}``; a level left out is placed by the localiser when the manifest lists one
        (``placed_by``: "localiser", with its confidence). Returns the series, per-level grades of every model, Kaggle
        rows and warnings.
        """
        study = self.read(upload)
        try:
            requests = {level: request.model_dump(exclude_defaults=True)
                        for level, request in parse_levels(levels or "{}").items()}
        except StudyError as error:
            refuse(str(error))
        if probabilities not in PROBABILITIES:
            refuse(f"Unknown probabilities {probabilities!r}; expected 'raw' or 'calibrated'.")
        return self.grade(study, requests, probabilities, auto=True)

    # ---- the page -------------------------------------------------------------------------------------------

    def on_upload(self, uploads) -> dict:
        try:
            session = StudySession(self.read(uploads))
        except gr.Error as error:
            return {**self._empty(), self.series_md: f"### ✖ Cannot read this study\n\n{error.message}"}
        study = session.study
        localised = self.localise(study)
        session.requests = {level: request.model_dump(exclude_none=True) for level, request in
                            localised.requests.items()}
        session.notes = localised.notes if self.localizer else {}
        descriptions = study.describe()
        index = study.series.index
        shown = {
            self.state: session, self.upload: None,
            self.series_md: study_text.series_markdown(
                descriptions, index(study.axial) if study.axial else None,
                index(study.sagittal) if study.sagittal else None),
            self.warnings: ui_text.warnings_markdown(
                study_warnings(study) + ([localised.problem] if self.localizer and localised.problem else [])),
            **self._results(None),
        }
        sagittal, axial = study.sagittal, study.axial
        shown[self.sagittal_slider] = gr.Slider(1, max(len(sagittal.slices), 2) if sagittal else 2, step=1,
                                                value=len(sagittal.slices) // 2 + 1 if sagittal else 1,
                                                visible=bool(sagittal and len(sagittal.slices) > 1))
        shown[self.sagittal_view] = self._sagittal(session, len(sagittal.slices) // 2 + 1 if sagittal else 1)
        shown[self.axial_slider] = gr.Slider(1, max(len(axial.slices), 2) if axial else 2, step=1, value=1,
                                             visible=bool(axial and len(axial.slices) > 1))
        shown[self.axial_view] = self._axial(session, 1)
        shown[self.placements_md] = self._placements(session)
        shown[self.level] = LEVELS[0]
        return shown

    def on_sagittal(self, session: StudySession | None, number: int) -> str:
        return self._sagittal(session, number) if session else ""

    def on_axial(self, session: StudySession | None, number: int) -> str:
        return self._axial(session, number) if session else ""

    def on_click(self, session: StudySession | None, level: str, number: int, event: gr.EventData) -> dict:
        """A click on the sagittal slice places the chosen level there and moves on to the next level."""
        data = getattr(event, "_data", None) or {}
        if session is None or session.study.sagittal is None or "x" not in data:
            return {}
        chosen = session.study.sagittal.slices[_clamp(number, session.study.sagittal) - 1]
        session.requests[level] = {"sagittal_instance": chosen.instance_number, "x": round(float(data["x"]), 1),
                                   "y": round(float(data["y"]), 1)}
        return self._placed(session, number, level)

    def on_use_axial(self, session: StudySession | None, level: str, number: int, sagittal_number: int) -> dict:
        """The shown axial slice becomes the chosen level's slice."""
        if session is None or session.study.axial is None:
            return {}
        chosen = session.study.axial.slices[_clamp(number, session.study.axial) - 1]
        session.requests[level] = {"axial_instance": chosen.instance_number}
        return self._placed(session, sagittal_number, level)

    def on_clear(self, session: StudySession | None, sagittal_number: int) -> dict:
        if session is None:
            return {}
        session.requests.clear()
        return {self.state: session, self.sagittal_view: self._sagittal(session, sagittal_number),
                self.placements_md: self._placements(session), self.level: LEVELS[0]}

    def on_grade(self, session: StudySession | None, probabilities: str, progress=gr.Progress()) -> dict:  # noqa: B008
        if session is None:
            return {self.headline: "*Upload a study first.*"}
        try:
            answer = self.grade(session.study, dict(session.requests), probabilities,
                                lambda done, total: progress(done / total, desc=f"Graded {done} of {total} slices"))
        except gr.Error as error:
            return {**self._results(None), self.headline: f"### ✖ Cannot grade this study\n\n{error.message}"}
        session.graded = dict(session.requests)
        return {self.state: session, **self._results(answer)}

    def on_explain(self, session: StudySession | None) -> str:
        """The Explain button: every model's heatmap at each graded level, on the slice that level was graded on."""
        if session is None or session.graded is None or not self.predictor.models:
            return study_text.STUDY_HEATMAP_PLACEHOLDER
        try:
            return level_heatmaps_html(*self.run_explain(session.study, session.graded, session.notes))
        except StudyError as error:
            return f'<div class="spinecad-placeholder">{html.escape(str(error))}</div>'

    def _placed(self, session: StudySession, sagittal_number: int, level: str) -> dict:
        following = LEVELS[(LEVELS.index(level) + 1) % len(LEVELS)]
        return {self.state: session, self.sagittal_view: self._sagittal(session, sagittal_number),
                self.placements_md: self._placements(session), self.level: following}

    def _sagittal(self, session: StudySession, number: int) -> str:
        series = session.study.sagittal
        if series is None:
            return study_text.NO_SAGITTAL
        chosen = series.slices[_clamp(number, series) - 1]
        try:
            pixels = chosen.read().pixels
        except ImageReadError as error:
            return f"*This sagittal slice cannot be shown: {error}*"
        points = {level: (r["x"], r["y"]) for level, r in session.requests.items()
                  if r.get("sagittal_instance") == chosen.instance_number}
        return sagittal_html(pixels, points, f"{series.label}: slice #{chosen.instance_number} "
                                             f"({_clamp(number, series)} of {len(series.slices)}, right to left)")

    def _axial(self, session: StudySession, number: int) -> str:
        series = session.study.axial
        if series is None:
            return study_text.NO_AXIAL
        chosen = series.slices[_clamp(number, series) - 1]
        try:
            pixels = chosen.read().pixels
        except ImageReadError as error:
            return f"*This axial slice cannot be shown: {error}*"
        return axial_html(pixels, f"{series.label}: slice #{chosen.instance_number} "
                                  f"({_clamp(number, series)} of {len(series.slices)}, head to feet)")

    def _placements(self, session: StudySession) -> str:
        placements = place_with_localiser(session.study, parse_levels(session.requests),
                                          Localised(notes=session.notes))
        rows = []
        for level, placement in placements.items():
            if placement.placed:
                how = (f"{placement.distance_mm:g} mm from the point" if placement.distance_mm is not None
                       else "chosen by hand")
                if placement.placed_by == "localiser":
                    how += f"; placed by the localiser, confidence {placement.confidence:.2f}: click to move it"
                rows.append((level, f"axial slice #{placement.axial_instance} ({how})"))
            else:
                rows.append((level, placement.note))
        return study_text.placements_markdown(rows)

    def _results(self, answer: dict | None) -> dict:
        if answer is None:
            return {self.headline: "", self.results_box: gr.Column(visible=False), self.table: None,
                    self.profile_plot: None, self.result_json: None, self.result_warnings: "",
                    self.heatmaps: study_text.STUDY_HEATMAP_PLACEHOLDER}
        return {self.headline: study_text.study_headline(answer), self.results_box: gr.Column(visible=True),
                self.table: study_table(answer), self.profile_plot: profile_figure(answer), self.result_json: answer,
                self.result_warnings: ui_text.warnings_markdown(answer["warnings"]),
                self.heatmaps: study_text.STUDY_HEATMAP_PLACEHOLDER}

    def _empty(self) -> dict:
        return {self.state: None, self.upload: None, self.warnings: "", self.placements_md: "",
                self.sagittal_view: "", self.axial_view: "", **self._results(None)}

    def render(self) -> None:
        """Lay the tab out and wire its events (call inside ``gr.Tab``)."""
        gr.Markdown(study_text.STUDY_INTRO)
        self.state = gr.State(None, time_to_live=SESSION_TTL_S)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                self.upload = gr.File(label="1. Upload a study (.zip or DICOM files)", file_count="multiple",
                                      type="filepath", elem_id="study-upload", height=120)
                gr.Markdown(study_text.STUDY_UPLOAD_HELP)
                self.series_md = gr.Markdown(study_text.STUDY_PLACEHOLDER, elem_id="study-series")
                self.warnings = gr.Markdown("", elem_id="study-warnings")
                gr.Markdown(study_text.CLICK_HELP)
                self.level = gr.Radio(list(LEVELS), value=LEVELS[0], label="Level being placed",
                                      elem_id="study-level")
                self.sagittal_slider = gr.Slider(1, 2, step=1, value=1, label="Sagittal slice", visible=False,
                                                 elem_id="sagittal-slider")
                self.sagittal_view = gr.HTML("", js_on_load=CLICK_JS, elem_id="sagittal-view")
                clear = gr.Button("Clear the points", variant="secondary", size="sm")
            with gr.Column(scale=2, min_width=320):
                self.axial_slider = gr.Slider(1, 2, step=1, value=1, label="Axial slice", visible=False,
                                              elem_id="axial-slider")
                self.axial_view = gr.HTML("", elem_id="axial-view")
                use_axial = gr.Button("Use this axial slice for the level being placed", variant="secondary",
                                      size="sm", elem_id="use-axial")
                self.placements_md = gr.Markdown("", elem_id="study-placements")
                probabilities = gr.Radio([("Raw", "raw"), ("Calibrated", "calibrated")], value="raw",
                                         label="Probabilities", elem_id="study-probabilities")
                grade = gr.Button("3. Grade the study", variant="primary", elem_id="grade-study")
        self.headline = gr.Markdown("", elem_id="study-headline")
        self.result_warnings = gr.Markdown("", elem_id="study-result-warnings")
        with gr.Column(visible=False) as self.results_box:
            self.table = gr.Dataframe(label="Every model at every level", interactive=False, wrap=True,
                                      elem_id="study-table")
            self.profile_plot = gr.Plot(show_label=False, elem_id="study-profile")
            gr.Markdown(study_text.PROFILE_EXPLAINED)
            explain = gr.Button("Explain: each model's heatmap at every graded level", variant="secondary",
                                elem_id="study-explain")
            self.heatmaps = gr.HTML(study_text.STUDY_HEATMAP_PLACEHOLDER, elem_id="study-heatmaps")
            gr.Markdown(ui_text.HEATMAP_EXPLAINED)
            with gr.Accordion("The result as JSON (what the `predict_study` API returns)", open=False):
                self.result_json = gr.JSON(label="predict_study API result", elem_id="study-json")
                gr.Markdown(study_text.STUDY_API_HELP)

        results = [self.headline, self.results_box, self.table, self.profile_plot, self.result_json,
                   self.result_warnings, self.heatmaps]
        loaded = [self.state, self.upload, self.series_md, self.warnings, self.sagittal_slider, self.sagittal_view,
                  self.axial_slider, self.axial_view, self.placements_md, self.level, *results]
        placed = [self.state, self.sagittal_view, self.placements_md, self.level]
        self.upload.upload(self.on_upload, self.upload, loaded, **PRIVATE, **MODEL_RUN)
        self.sagittal_slider.change(self.on_sagittal, [self.state, self.sagittal_slider], self.sagittal_view,
                                    **PRIVATE)
        self.axial_slider.change(self.on_axial, [self.state, self.axial_slider], self.axial_view, **PRIVATE)
        self.sagittal_view.click(self.on_click, [self.state, self.level, self.sagittal_slider], placed, **PRIVATE)
        use_axial.click(self.on_use_axial, [self.state, self.level, self.axial_slider, self.sagittal_slider], placed,
                        **PRIVATE)
        clear.click(self.on_clear, [self.state, self.sagittal_slider], placed, **PRIVATE)
        grade.click(self.on_grade, [self.state, probabilities], [self.state, *results], **PRIVATE, **MODEL_RUN)
        explain.click(self.on_explain, self.state, self.heatmaps, **PRIVATE, **MODEL_RUN)
        api_upload, api_levels = gr.File(visible=False), gr.Textbox(value="{}", visible=False)
        api_probabilities = gr.Textbox(value="raw", visible=False)
        gr.Button(visible=False).click(self.predict_study, [api_upload, api_levels, api_probabilities],
                                       gr.JSON(visible=False), api_name="predict_study", **MODEL_RUN)


def _clamp(number: int | float | None, series) -> int:
    return min(max(int(number or 1), 1), len(series.slices))


