"""Several processes train: ``--devices cpu,cpu`` (one worker per device, each taking the next model) and
``torchrun --nproc-per-node 2`` (one model with DistributedDataParallel over gloo). Both are killed mid-run and
resumed, and must end exactly where an uninterrupted run of the same command ends."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch

from spinecad.evaluation.store import load_metrics, load_summary
from spinecad.inference.manifest import read_manifest
from tests.conftest import REPO
from train.distributed import Ranks, check_coverage, epoch_steps, shard

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
            "train"]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1"}


def command(phantom: Path, out: Path, *extra: str) -> list[str]:
    return ["--demo", "--data-dir", str(phantom), "--no-progress", "--n-boot", "20", "--output-dir", str(out),
            "--cache-dir", str(out.parent / "cache"), *extra]


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(process: subprocess.Popen, timeout: int = 400) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def kill_at(process: subprocess.Popen, marker: str, *, whole_group: bool) -> str:
    """SIGKILL the run (its process group, as a preempted machine does, or the parent alone) once ``marker`` shows."""
    seen, deadline = [], time.monotonic() + 400
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            if whole_group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "".join(seen)[-3000:]
    else:
        raise AssertionError(f"{marker!r} never appeared:\n" + "".join(seen)[-3000:])
    process.wait(timeout=60)
    return "".join(seen)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def same_weights(a: Path, b: Path) -> bool:
    first, second = (safetensors.torch.load_file(folder / "model.safetensors") for folder in (a, b))
    return first.keys() == second.keys() and all(np.array_equal(first[k].numpy(), second[k].numpy()) for k in first)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from train.phantom import write_phantom_dataset

    folder = tmp_path_factory.mktemp("phantom-parallel")
    write_phantom_dataset(folder, n_studies=24, seed=5)
    return folder


@pytest.mark.parametrize(("n_samples", "batch_size", "world_size"), [(78, 32, 2), (65, 32, 2), (33, 8, 3), (5, 4, 2)])
def test_every_sample_is_read_by_exactly_one_rank_each_epoch(n_samples, batch_size, world_size):
    orders = []
    for epoch in range(3):
        steps = epoch_steps(n_samples, batch_size, seed=42, epoch=epoch, world_size=world_size)
        per_rank = [[i for step in steps for i in shard(step, Ranks(rank, world_size, rank))]
                    for rank in range(world_size)]
        read = [i for indices in per_rank for i in indices]
        assert sorted(read) == list(range(n_samples))  # none twice, none left out
        assert all(len(shard(step, Ranks(r, world_size, r))) >= 1 for step in steps for r in range(world_size))
        check_coverage(per_rank, n_samples)
        orders.append(read)
    assert orders[0] != orders[1] != orders[2]  # each epoch reshuffles
    with pytest.raises(RuntimeError, match="read twice"):
        check_coverage([per_rank[0], per_rank[0]], n_samples)  # two ranks reading the same shard


def test_devices_cpu_cpu_killed_and_resumed_ends_as_the_uninterrupted_run(phantom, tmp_path):
    args = ["--models", "vit_b16,resnet152", "--epochs", "2", "--devices", "cpu,cpu"]
    whole = start([sys.executable, "-m", "train", *command(phantom, tmp_path / "whole" / "out", *args)])
    out = tmp_path / "cut" / "out"
    process = start([sys.executable, "-m", "train", *command(phantom, out, *args)])
    log = kill_at(process, "[resnet152-cpu] epoch 2/2", whole_group=False)  # the parent alone
    assert "training 2 models on 2 workers: cpu, cpu" in log
    deadline = time.monotonic() + 30
    while group_alive(process.pid):  # its workers notice and end: no orphan keeps writing the same state
        assert time.monotonic() < deadline, "a worker outlived its killed parent"
        time.sleep(0.2)
    assert not (out / "manifest.json").exists()

    rerun = subprocess.run([sys.executable, "-m", "train", *command(phantom, out, *args)], cwd=REPO,
                           env=environment(), capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert re.search(r"\[resnet152-cpu\] resuming after epoch [12] of 2", rerun.stdout), rerun.stdout[-3000:]
    finish(whole)
    expected = tmp_path / "whole" / "out"
    assert [e.key for e in read_manifest(out / "manifest.json").models] == ["vit_b16-cpu", "resnet152-cpu"]
    for key in ("vit_b16-cpu", "resnet152-cpu"):
        assert same_weights(out / key, expected / key), key
        assert load_metrics(out / "evaluation", key, "test").metrics == \
            load_metrics(expected / "evaluation", key, "test").metrics


def test_a_failed_model_is_reported_and_the_others_finish(phantom, tmp_path):
    out = tmp_path / "out"
    (out / ".state" / "vit_b16-cpu.safetensors").mkdir(parents=True)  # its resume state cannot be written
    result = subprocess.run(
        [sys.executable, "-m", "train", *command(phantom, out, "--models", "vit_b16,resnet152", "--epochs", "1",
                                                   "--devices", "cpu,cpu")],
        cwd=REPO, env=environment(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"error: vit_b16-cpu failed on cpu: \w*Error", result.stderr), result.stderr[-3000:]
    assert "1 of 2 models failed" in result.stderr and "rerun the same command" in result.stderr
    assert "[resnet152-cpu] done on cpu" in result.stdout
    assert [e.key for e in read_manifest(out / "manifest.json").models] == ["resnet152-cpu"]
    assert [m.key for m in load_summary(out / "evaluation").models] == ["resnet152-cpu", "ensemble"]


def test_torchrun_two_gloo_processes_killed_and_resumed_ends_as_the_uninterrupted_run(phantom, tmp_path):
    args = ["--models", "resnet152", "--epochs", "3", "--batch-size", "16"]
    whole = start([*TORCHRUN, *command(phantom, tmp_path / "whole" / "out", *args)])
    out = tmp_path / "cut" / "out"
    log = kill_at(start([*TORCHRUN, *command(phantom, out, *args)]), "[resnet152-cpu] epoch 2/3", whole_group=True)
    assert not (out / "manifest.json").exists()
    # Every epoch's shards were checked on rank 0: each training sample read by exactly one rank.
    assert re.search(r"epoch 1: .* \| 78 samples, each read once by one of 2 ranks", log), log[-3000:]

    rerun = subprocess.run([*TORCHRUN, *command(phantom, out, *args)], cwd=REPO, env=environment(),
                           capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert re.search(r"resuming after epoch [12] of 3", rerun.stdout), rerun.stdout[-3000:]
    assert rerun.stdout.count("resuming after epoch") == 1  # rank 0 alone logs
    finish(whole)
    expected = tmp_path / "whole" / "out"
    assert same_weights(out / "resnet152-cpu", expected / "resnet152-cpu")
    assert load_metrics(out / "evaluation", "resnet152-cpu", "test").metrics == \
        load_metrics(expected / "evaluation", "resnet152-cpu", "test").metrics
    history = (out / "evaluation" / "resnet152-cpu" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3
