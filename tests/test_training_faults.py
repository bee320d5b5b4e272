"""``python -m train`` killed (SIGKILL) while it writes: no reader ever accepts a half-written file, and rerunning
the same command ends exactly where an uninterrupted run ends.

tests/test_train.py kills a run mid-epoch. This module kills the same command at the instants that matter for
files, one after another in the same output folder, as a machine that keeps getting preempted would:

1. while the resume state of epoch 2 is half written,
2. while the first metrics.json of the evaluation is half written,
3. between the two renames that swap the evaluated checkpoint (with its model card) into place,
4. while manifest.json is half written.

A small driver runs the real ``train.cli.main`` with one hook at the OS boundary: at the n-th ``os.replace`` (or
state write) matching the kill point it leaves the staged file as a killed writer would (complete, or cut in half)
and sends itself SIGKILL. After each kill the test checks what a reader (the next run, the app, the Hub push) sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch

from spinecad.evaluation.store import ArtefactError, load_metrics, load_summary, validate_tree
from spinecad.inference.manifest import ManifestError, read_manifest
from spinecad.models.model import SpineCADModel
from tests.conftest import REPO

pytestmark = pytest.mark.slow

MODEL = "vit_b16-cpu"
KILL_ENV = "SPINECAD_KILL_AT"  # "<point>:<n>": die at the n-th matching write
DRIVER = r"""
import os, signal, sys
import safetensors.torch

point, nth = os.environ["SPINECAD_KILL_AT"].rsplit(":", 1)
seen = 0

def due() -> bool:
    global seen
    seen += 1
    return seen == int(nth)

def die(staged=None, cut=False):
    if cut:  # what a write interrupted half way leaves on disk
        os.truncate(staged, os.path.getsize(staged) // 2)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

real_replace, real_save_file = os.replace, safetensors.torch.save_file

def replace(src, dst, *args, **kwargs):
    src, dst = str(src), str(dst)
    if point == "metrics" and dst.endswith("metrics.json") and due():
        die(src, cut=True)
    if point == "manifest" and dst.endswith("manifest.json") and due():
        die(src, cut=True)
    if point == "swap" and src.endswith(".staging") and due():
        die()  # the old checkpoint is parked as .<name>.old, the new one still staged
    return real_replace(src, dst, *args, **kwargs)

def save_file(tensors, filename, *args, **kwargs):
    real_save_file(tensors, filename, *args, **kwargs)
    if point == "state" and "/.state/" in str(filename) and due():
        die(filename, cut=True)

os.replace, safetensors.torch.save_file = replace, save_file
from train.cli import main
sys.exit(main(sys.argv[1:]))
"""


def train_command(phantom: Path, output: Path, cache: Path) -> list[str]:
    return ["--demo", "--data-dir", str(phantom), "--models", MODEL.removesuffix("-cpu"), "--epochs", "2",
            "--no-progress", "--n-boot", "20", "--output-dir", str(output), "--cache-dir", str(cache)]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = environment() | ({KILL_ENV: kill_at} if kill_at else {})
    command = [sys.executable, "-c", DRIVER, *args] if kill_at else [sys.executable, "-m", "train", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def killed(args: list[str], kill_at: str) -> str:
    result = run(args, kill_at)
    output = result.stdout[-2000:] + result.stderr[-2000:]
    assert result.returncode == -signal.SIGKILL, f"not killed at {kill_at}:\n{output}"
    return result.stdout


def leftovers(output: Path) -> list[str]:
    """Staged files and folders a killed writer left (names no reader opens)."""
    return sorted(str(p.relative_to(output)) for p in output.rglob(".*") if p.name not in (".state",))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from train.phantom import write_phantom_dataset

    folder = tmp_path_factory.mktemp("phantom-faults")
    write_phantom_dataset(folder, n_studies=24, seed=5)
    return folder


@pytest.fixture(scope="module")
def uninterrupted(phantom, tmp_path_factory):
    """The same command run once without faults, started in the background: the interrupted runs share 2 cores."""
    root = tmp_path_factory.mktemp("uninterrupted")
    args = train_command(phantom, root / "out", root / "cache")
    process = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=REPO, env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def finished() -> Path:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
        return root / "out"

    yield finished
    if process.poll() is None:
        process.kill()


def test_killed_writes_are_never_read_and_the_rerun_ends_as_the_uninterrupted_run(phantom, uninterrupted, tmp_path):
    out = tmp_path / "out"
    args = train_command(phantom, out, tmp_path / "cache")
    state = out / ".state" / f"{MODEL}.safetensors"
    evaluation = out / "evaluation"

    # 1. The resume state of epoch 2, half written: epoch 1's state is what a rerun finds.
    killed(args, "state:2")
    staged = list(state.parent.glob(".*.partial"))
    assert len(staged) == 1
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error type; any refusal will do
        safetensors.torch.load_file(staged[0])
    assert json.loads(safetensors.safe_open(str(state), "pt").metadata()["resume"])["next_epoch"] == 1

    # 2. The first metrics.json of the evaluation, half written. The rerun resumed after epoch 1 and cleared the
    # staged state; the evaluation is not there for any reader: no metrics, no summary, no manifest.
    stdout = killed(args, "metrics:1")
    assert f"[{MODEL}] resuming after epoch 1 of 2" in stdout
    assert not list(state.parent.glob(".*.partial"))
    with pytest.raises(ArtefactError, match="file is missing"):
        load_metrics(evaluation, MODEL, "val")
    with pytest.raises(ArtefactError):
        load_summary(evaluation)
    assert not (out / "manifest.json").exists()

    # 3. Between the two renames of the checkpoint swap: the old checkpoint is parked, the new one staged. Neither
    # name is one the evaluation or the app reads, and there is still no manifest pointing at anything.
    stdout = killed(args, "swap:1")
    assert f"[{MODEL}] resuming after epoch 2 of 2" in stdout  # training is over; only the evaluation reruns
    assert not (out / MODEL).exists()
    assert SpineCADModel.load(out / f".{MODEL}.old") and (out / f".{MODEL}.staging" / "model.safetensors").exists()
    assert not (out / "manifest.json").exists()

    # 4. manifest.json half written: the parked checkpoint was put back, and the app still finds no manifest.
    killed(args, "manifest:1")
    assert SpineCADModel.load(out / MODEL) and not (out / f".{MODEL}.old").exists()
    with pytest.raises(ManifestError, match="No model manifest"):
        read_manifest(out / "manifest.json")
    half = next(out.glob(".manifest.json.*.partial"))
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(half)

    # 5. The same command once more ends where the uninterrupted run ended, to the last bit of every weight.
    assert run(args).returncode == 0
    whole = uninterrupted()
    for split in ("val", "test"):
        expected, got = load_metrics(whole / "evaluation", MODEL, split), load_metrics(evaluation, MODEL, split)
        assert got.metrics == expected.metrics and got.intervals == expected.intervals
    expected_weights = safetensors.torch.load_file(whole / MODEL / "model.safetensors")
    got_weights = safetensors.torch.load_file(out / MODEL / "model.safetensors")
    assert all(np.array_equal(expected_weights[k].numpy(), got_weights[k].numpy()) for k in expected_weights)
    validate_tree(evaluation)
    assert [entry.key for entry in read_manifest(out / "manifest.json").models] == [MODEL]
    # What is left of the kills: staged files only (dot-names ending .partial), which no reader opens.
    assert all(Path(name).name.endswith(".partial") for name in leftovers(out)), leftovers(out)


def test_a_cut_or_garbled_slice_cache_is_decoded_again_never_read(phantom, tmp_path):
    from train.cache import build_cache
    from train.rsna import build_sample_index

    index = build_sample_index(phantom)
    files = [str(index.image_file(path)) for path in index.rows[index.rows["usable"]]["image_path"]][:12]
    first = build_cache(files, tmp_path, 32, progress=False)
    data_file, meta_file = next(tmp_path.glob("*.u8")), next(tmp_path.glob("*.json"))
    whole = np.array(first.images)
    for damage in ("cut data", "garbled meta", "missing data"):
        if damage == "cut data":
            os.truncate(data_file, data_file.stat().st_size // 2)  # a copy or a disk that gave out half way
        elif damage == "garbled meta":
            meta_file.write_text('{"files": [')
        else:
            data_file.unlink()
        again = build_cache(files, tmp_path, 32, progress=False)
        assert again.files == first.files and np.array_equal(np.array(again.images), whole), damage


def test_a_cut_resume_state_is_not_trusted_and_staged_copies_are_cleared(tmp_path):
    import torch

    from train.state import ResumeState, load_state, save_state

    def fresh():
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 3)
        return model, torch.optim.AdamW(model.parameters())

    model, optimizer = fresh()
    model(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    path = tmp_path / ".state" / "m.safetensors"
    save_state(path, model=model, optimizer=optimizer, rng={"torch": torch.get_rng_state()},
               state=ResumeState(1, [{"epoch": 1}], 0.5, 1), fingerprint="run")
    stale = path.with_name(f".{path.name}.killed.partial")
    stale.write_bytes(path.read_bytes()[:100])  # what a run killed while saving leaves beside it
    resumed = load_state(path, model=fresh()[0], optimizer=fresh()[1], fingerprint="run")
    assert resumed is not None and resumed[0].next_epoch == 1 and not stale.exists()
    whole = path.read_bytes()
    for cut in (0, 8, len(whole) // 2, len(whole) - 1):
        path.write_bytes(whole[:cut])
        assert load_state(path, model=fresh()[0], optimizer=fresh()[1], fingerprint="run") is None, cut
