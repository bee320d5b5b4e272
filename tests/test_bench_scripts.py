"""The bench scripts run, on the CPU and with tiny settings, as real subprocesses started the way the README says.

bench/gpu.py measures the GPU path on CUDA; here its CPU mode must still print one row per backbone. bench/load.py
launches the app and drives it with concurrent clients over loopback; here with 2 clients x 2 predictions x 2
rounds: every valid file must be graded and every invalid one refused with its own message.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from spinecad.models.registry import profile
from tests.app_fixture import write_fixture_set
from tests.conftest import REPO

pytestmark = pytest.mark.slow

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
NUMBER = r"\s+(?:-?[0-9.]+(?:e[+-]\d+)?|nan)"


def bench(script: str, *args: str, cwd) -> subprocess.CompletedProcess:
    """``python bench/<script> ...`` from another folder: the package is installed (pip install -e .), and the
    script finds this checkout's own files (app.py, checkpoints) beside itself."""
    return subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_data_bench_prints_both_ratios(tmp_path):
    result = bench("data.py", "--rounds", "1", "--size", "64", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for label in ("with flip \\+ rotation", "input only"):
        line = re.search(rf"^{label}:\s+baseline .*?({NUMBER}) images/s, cached({NUMBER}) images/s ->({NUMBER})x$",
                         result.stdout, re.MULTILINE)
        assert line, f"no {label!r} line:\n{result.stdout}"
        baseline, cached, ratio = (float(value) for value in line.groups())
        assert baseline > 0 and cached > 0 and ratio == pytest.approx(cached / baseline, abs=0.1)


def test_gpu_bench_runs_on_the_cpu_and_prints_a_row_per_backbone(tmp_path):
    result = bench("gpu.py", "--profile", "cpu", "--predictions", "2", "--train-steps", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.startswith("device=cpu")
    for spec in profile("cpu"):
        row = re.search(rf"^{re.escape(spec.name)}(?:{NUMBER}){{9}}\s*$", result.stdout, re.MULTILINE)
        assert row, f"no row of nine figures for {spec.name}:\n{result.stdout}"


def test_load_bench_with_tiny_settings_grades_every_valid_file(tmp_path_factory, tmp_path):
    manifest = write_fixture_set(tmp_path_factory.getbasetemp() / "spinecad-fixture")
    figures = tmp_path / "load.json"
    result = bench("load.py", "--manifest", str(manifest), "--clients", "2", "--predictions", "2", "--rounds", "2",
                   "--json", str(figures), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(figures.read_text())
    valid, invalid = report["overall"]["valid"], report["overall"]["invalid"]
    assert valid["requests"] + invalid["requests"] == 2 * 2 * 2 and invalid["requests"] > 0
    assert valid["errors"] == 0 and invalid["errors"] == 0 and report["wrong"] == []
    assert report["uploads_left"] == 0 and set(report["rss_mib"]) == {"start", "after round 1", "after round 2"}
    assert "valid files:" in result.stdout and "server RSS: start" in result.stdout
