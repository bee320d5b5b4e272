"""The Study tab's wording, for people who are not radiologists or ML engineers."""

STUDY_INTRO = """\
A lumbar MRI **study** holds several **series**: stacks of slices through the spine. The **sagittal** series
shows the spine from the side, with every disc; the **axial** series cuts across it, one slice at a time, and that
is what the six models read. Upload a whole study, point at each disc on the sagittal slice, and SpineCAD finds
the axial slice through that point from the positions the scanner wrote into every file (millimetres in the
patient's own coordinates), then grades every level. **Research software: it does not diagnose.**
"""
STUDY_UPLOAD_HELP = (
    "A .zip of the study's DICOM files, or the files themselves (any names; a Kaggle `<study>/<series>/<n>.dcm` "
    "layout names the study). Everything is read in memory and the upload is deleted from the server at once. "
    "Only non-identifying facts are kept: no names, dates, UIDs or series descriptions are shown."
)
STUDY_PLACEHOLDER = "*Upload a study to see its series.*"
CLICK_HELP = (
    "**2. Place the levels.** Choose a level, then click the middle of the spinal canal (the bright band behind the "
    "vertebrae) at that disc on the sagittal slice; the next level is chosen for you. Or pick an axial slice below "
    "and use it for the level."
)
NO_SAGITTAL = "*This study has no sagittal series: choose each level's axial slice below instead.*"
NO_AXIAL = "*This study has no axial series: there is nothing the models can grade.*"
PROFILE_EXPLAINED = (
    "Each line is one level's head of the ensemble, run on every axial slice: where the stack passes through a disc, "
    "the line of that disc's level is the one to read. A good placement (★) sits on a peak or plateau of its own "
    "line; a star far from it suggests the point missed the disc."
)
STUDY_HEATMAP_PLACEHOLDER = (
    '<div class="spinecad-placeholder spinecad-small">Press <b>Explain</b> to see where each model looked at each '
    "graded level, on that level's own slice (about a second per model and level on a CPU).</div>"
)
STUDY_API_HELP = """\
Scripted use: `client.predict(handle_file("study.zip"), '{"L4/L5": {"sagittal_instance": 9, "x": 120, "y": 140}}',
api_name="/predict_study")`. `levels` may be `{}`, or per level a point on the sagittal series or
`{"axial_instance": N}`; instance numbers are the headers' InstanceNumber.
"""


def series_markdown(descriptions: list[dict], axial: int | None, sagittal: int | None) -> str:
    """The study's series as a table, with the ones used marked."""
    lines = ["| # | plane | weighting | slices | used for | notes |", "|---|---|---|---|---|---|"]
    for index, series in enumerate(descriptions):
        use = "grading" if index == axial else "placing levels" if index == sagittal else ""
        notes = "; ".join(series["problems"]) or ""
        lines.append(f"| {index + 1} | {series['plane']} | {series['weighting'] or 'not stated'} | {series['slices']} "
                     f"| {use} | {notes} |")
    return "\n".join(lines)


def placements_markdown(rows: list[tuple[str, str]]) -> str:
    return "\n".join(f"- **{level}**: {what}" for level, what in rows)


def study_headline(answer: dict) -> str:
    """One line per level: the ensemble's grade and how many models agree, or why it is not graded."""
    lines = ["### The study, level by level"]
    for level, entry in answer["levels"].items():
        if entry["ensemble"] is None:
            lines.append(f"- **{level}**: not graded ({entry['note'] or 'no slice'})")
            continue
        grade = entry["ensemble"]["grade"]
        agree = round(entry["ensemble"]["agreement"] * len(entry["models"]))
        caution = " — ⚠️ not like the images these models learnt from" if entry.get("unfamiliar") else ""
        lines.append(f"- **{level}**: {grade} ({entry['ensemble'][grade]:.2f}); {agree} of {len(entry['models'])} "
                     f"models agree; slice #{entry['axial_instance']}{caution}")
    return "\n".join(lines)
