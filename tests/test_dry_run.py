"""``--dry-run`` plans a run without writing anything, and every bad input is refused with one clear message before
any training starts: no train.csv, a folder without images, a read-only output folder, a cache disk without space,
a GPU that is not there."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from train.cli import main
from train.preflight import PreflightError, check_space, free_bytes, human_bytes

CSVS = ("train.csv", "train_series_descriptions.csv", "train_label_coordinates.csv")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from train.phantom import write_phantom_dataset

    folder = tmp_path_factory.mktemp("phantom-dry")
    write_phantom_dataset(folder, n_studies=12, seed=5)
    return folder


def train(capsys, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_dry_run_counts_sizes_and_times_without_writing(phantom, tmp_path, capsys):
    from train.rsna import build_sample_index

    out, cache = tmp_path / "out", tmp_path / "cache"
    code, stdout, stderr = train(capsys, "--demo", "--data-dir", str(phantom), "--models", "vit_b16,swin_b",
                                 "--dry-run", "--epochs", "4", "--output-dir", str(out), "--cache-dir", str(cache))
    assert code == 0, stderr
    index = build_sample_index(phantom)
    files = {path for path in index.rows[index.rows["usable"]]["image_path"]}
    assert f"images found: {len(files)} of the {len(files)} slices" in stdout
    assert f"cache: {human_bytes(len(files) * 128 * 128)} to write in {cache}" in stdout
    assert re.search(r"outputs: about [\d.]+ MB of checkpoints and resume states", stdout)
    for name in ("vit_b16-cpu", "swin_b-cpu"):
        assert re.search(rf"{name} +\d+ s per epoch, [\d.]+ (s|min) with evaluation", stdout), stdout
    assert re.search(r"estimated total: [\d.]+ (s|min) \(.* then 2 models on 1 worker\)", stdout), stdout
    assert not out.exists() and not cache.exists()  # a plan writes nothing


def test_a_folder_without_images_is_named(phantom, tmp_path, capsys):
    for name in CSVS:
        shutil.copy(phantom / name, tmp_path / name)
    code, _, stderr = train(capsys, "--data-dir", str(tmp_path), "--dry-run", "--profile", "cpu",
                            "--output-dir", str(tmp_path / "out"))
    assert code == 2 and "No images found" in stderr and "train_images" in stderr, stderr


def test_a_data_dir_without_train_csv_is_refused_first(phantom, tmp_path, capsys):
    for name in CSVS[1:]:
        shutil.copy(phantom / name, tmp_path / name)
    code, _, stderr = train(capsys, "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out"))
    assert code == 2 and f"{tmp_path} has no train.csv" in stderr, stderr
    assert not (tmp_path / "out").exists()


def test_a_gpu_that_is_not_there_is_refused(phantom, tmp_path, capsys):
    missing = f"cuda:{torch.cuda.device_count()}"  # the first index this machine lacks (cuda:0 on a CPU machine)
    code, _, stderr = train(capsys, "--demo", "--data-dir", str(phantom), "--devices", f"cpu,{missing}",
                            "--output-dir", str(tmp_path / "out"))
    assert code == 2 and f"--devices names {missing}, but" in stderr, stderr
    assert not (tmp_path / "out").exists()
    code, _, stderr = train(capsys, "--demo", "--data-dir", str(phantom), "--devices", "gpu0")
    assert code == 2 and "'gpu0' is not a device" in stderr


def test_the_space_check_compares_the_estimate_with_the_free_space(tmp_path):
    free = free_bytes(tmp_path)
    check_space([(tmp_path, free // 4, "cache"), (tmp_path / "not-yet", free // 4, "checkpoints")])
    with pytest.raises(PreflightError, match=r"Not enough disk space: .*\(cache .* \+ checkpoints .* is free there"):
        check_space([(tmp_path, free // 2, "cache"), (tmp_path / "not-yet", free // 2, "checkpoints")])


def unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


def run_with_mount(folder: Path, options: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m train`` in a private mount namespace where ``folder`` is a fresh tmpfs mounted with ``options``
    (a real read-only or nearly full disk, for this process alone)."""
    script = f'mount -t tmpfs -o {options} tmpfs "{folder}" && exec "$0" -m train "$@"'
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, sys.executable, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_read_only_output_folder_is_refused(phantom, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = ["--demo", "--data-dir", str(phantom), "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")]
    if unshare_available():
        result = run_with_mount(out, "ro", args)
    elif os.geteuid() != 0:
        out.chmod(0o555)
        result = subprocess.run([sys.executable, "-m", "train", *args], cwd=REPO, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    else:
        pytest.skip("root without unshare: no way to make a folder read-only for this process")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"Cannot write to the output folder {out}" in result.stderr and "Traceback" not in result.stderr
    assert "epoch" not in result.stdout and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_a_cache_disk_without_space_is_refused_before_decoding(phantom, tmp_path):
    if not unshare_available():
        pytest.skip("unshare (a private mount namespace) is not available to make a small disk")
    cache = tmp_path / "cache"
    cache.mkdir()
    result = run_with_mount(cache, "size=64k", ["--demo", "--data-dir", str(phantom), "--output-dir",
                                                str(tmp_path / "out"), "--cache-dir", str(cache)])
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"Not enough disk space: the run needs [\d.]+ KB \(cache [\d.]+ KB in \S+cache, plus 10%\), "
                     r"but only [\d.]+ KB is free there", result.stderr), result.stderr[-2000:]
    assert "decoding" not in result.stderr + result.stdout and "epoch" not in result.stdout


def test_a_precision_the_device_cannot_run_is_refused(phantom, tmp_path, capsys):
    code, _, stderr = train(capsys, "--demo", "--data-dir", str(phantom), "--devices", "cpu", "--precision", "fp16",
                            "--output-dir", str(tmp_path / "out"))
    assert code == 2 and "fp16 is a GPU precision" in stderr, stderr
    assert not (tmp_path / "out").exists()
