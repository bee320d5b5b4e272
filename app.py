"""SpineCAD's Hugging Face Space: six models grade lumbar spinal canal stenosis on axial MRI slices and whole studies.

    python app.py      # models from SPINECAD_MANIFEST or checkpoints/manifest.json;
                       # GRADIO_SERVER_NAME / GRADIO_SERVER_PORT honoured

Build the predictor, build the page (``spinecad.ui``), launch.
"""

import spaces  # noqa: F401, I001 - first: on a ZeroGPU Space it patches torch before anything imports torch

import logging
import os
import time
from pathlib import Path

from spinecad import ui
from spinecad.ui import runtime

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
MANIFEST = Path(os.environ.get("SPINECAD_MANIFEST") or CHECKPOINTS / "manifest.json")
EXAMPLES = CHECKPOINTS / "examples"

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
runtime.bound_memory()  # before the models and the worker threads take memory
started = time.perf_counter()
predictor, problem = ui.load_predictor(MANIFEST)  # ZeroGPU wants the models on CUDA at start, as it lends it
logging.getLogger("app").info(
    "%d model(s) on %s, %d failed, loaded in %.1f s", len(predictor.models), predictor.device,
    len(predictor.failures), time.perf_counter() - started)
demo = ui.build(predictor, examples_dir=EXAMPLES, problem=problem)

if __name__ == "__main__":
    ui.launch(demo, max_threads=runtime.MAX_THREADS)
