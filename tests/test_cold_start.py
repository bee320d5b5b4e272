"""What the app imports at start: nothing that only a heatmap or only training needs (a fresh interpreter is the
point here)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

# pytorch-grad-cam and OpenCV: the first heatmap imports them; scikit-learn: computing metrics (training) does.
NOT_AT_START = ("pytorch_grad_cam", "cv2", "sklearn")


def test_importing_the_app_package_leaves_heatmap_and_training_libraries_unloaded():
    probe = ("import sys, spinecad.ui, spinecad.inference.heatmaps; "
             f"print(sorted(m for m in {NOT_AT_START!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
