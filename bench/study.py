"""A 20-slice axial series through ``/predict_study`` against its 20 slices one by one through ``/predict``.

    python bench/study.py               # the committed demo set (six CPU-profile models), on a launched app
    python bench/study.py --repeats 5

Both go through the real app (launched in this process, called with gradio_client), so upload, reading and the
queue are in both; the feature cache is emptied before every run. Prints the medians and
``study/slices = X (target <= 0.50)``.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from timing import interleaved_medians  # bench/timing.py (the script folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
N_SLICES = 20


def write_series(folder: Path) -> list[Path]:
    """20 axial phantom slices 4 mm apart, one series, with patient geometry."""
    from pydicom.uid import generate_uid

    from train.phantom import AXIAL_FOV_MM, SeriesIdentity, SliceGeometry, render_axial_scene, write_axial_dicom

    rng = np.random.default_rng(0)
    identity = SeriesIdentity("Axial T2", 2, "BENCH^0001", generate_uid(), generate_uid(), generate_uid())
    spacing = AXIAL_FOV_MM / 256
    paths = []
    for index in range(N_SLICES):
        geometry = SliceGeometry((-90.0, -90.0, 40.0 - 4.0 * index), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                                 spacing)
        pixels = render_axial_scene(index % 3, rng, 256).pixels
        paths.append(write_axial_dicom(folder / f"{index + 1}.dcm", pixels, instance_number=index + 1,
                                       series=identity, geometry=geometry))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--manifest", type=Path, default=REPO / "checkpoints" / "manifest.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spinecad-bench-study-"))
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio-tmp")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client, handle_file

    from spinecad import ui

    slices = write_series(work / "series")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in slices:
            archive.write(path, f"study/series/{path.name}")
    study_zip = work / "study.zip"
    study_zip.write_bytes(buffer.getvalue())

    predictor, problem = ui.load_predictor(args.manifest)
    blocks = ui.build(predictor, problem=problem)
    _, url, _ = ui.launch(blocks, prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    client = Client(url, verbose=False)
    try:
        def one_by_one() -> None:
            predictor.clear_cache()
            for path in slices:
                client.predict(handle_file(str(path)), "L4/L5", "raw", api_name="/predict")

        def study() -> None:
            predictor.clear_cache()
            answer = client.predict(handle_file(str(study_zip)), "{}", "raw", api_name="/predict_study")
            assert len(answer["profile"]["instances"]) == N_SLICES

        medians = interleaved_medians({"slices": one_by_one, "study": study}, args.repeats)
    finally:
        client.close()
        blocks.close()
    print(f"{len(predictor.models)} models, {N_SLICES} axial slices, device {predictor.device}; medians of "
          f"{args.repeats} interleaved rounds")
    print(f"  {N_SLICES} x /predict        {medians['slices']:9.0f} ms")
    print(f"  1 x /predict_study     {medians['study']:9.0f} ms")
    print(f"study/slices = {medians['study'] / medians['slices']:.2f} (target <= 0.50)")


if __name__ == "__main__":
    main()
