"""Several models at once: one worker process per device, each taking the next model from a shared queue.

Workers are spawned processes (the start method CUDA needs) that train with ``train_model`` exactly as a single
process would, so every model resumes from its own state after a kill. The decoded-slice cache is shared: the
workers map the same file. A model that fails is reported and the others finish; a worker that dies (killed, out
of memory) fails only the model it held. Workers end themselves when the parent process dies.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from spinecad.models.registry import BackboneSpec
from train.recipe import Recipe


@dataclass(frozen=True)
class Failure:
    """A model whose training did not finish, where it ran, and why."""

    model: str
    device: str
    reason: str


def train_on_devices(
    specs: list[BackboneSpec],
    recipe: Recipe,
    data,  # train.loop.TrainingData
    output_dir: Path,
    devices: list[torch.device],
    *,
    forced_precision: str | None = None,
    log: Callable[[str], None] = print,
) -> list[Failure]:
    """Train ``specs`` on ``devices`` (one worker each, never more workers than models); return the failures."""
    context = multiprocessing.get_context("spawn")
    jobs, results = context.Queue(), context.Queue()
    for spec in specs:
        jobs.put(spec)
    devices = devices[:len(specs)]
    cpu_workers = sum(device.type == "cpu" for device in devices)
    threads = max(1, (os.cpu_count() or 1) // max(cpu_workers, 1))
    workers = {}
    for device in devices:
        jobs.put(None)  # one stop sign per worker
        process = context.Process(target=_worker, name=f"train-{device}",
                                  args=(str(device), jobs, results, recipe, data, output_dir, forced_precision,
                                        os.getpid(), threads))
        process.start()
        workers[process] = str(device)
    log(f"training {len(specs)} models on {len(devices)} workers: {', '.join(workers.values())}")

    holding: dict[str, str] = {}  # device -> model it is training
    failures: list[Failure] = []

    def handle(kind: str, device: str, name: str, message: str) -> None:
        if kind == "started":
            holding[device] = name
            return
        holding.pop(device, None)
        if kind == "failed":
            failures.append(Failure(name, device, message))
        log(f"[{name}] {'failed' if kind == 'failed' else 'done'} on {device}: {message}")

    while workers:
        try:
            handle(*results.get(timeout=1.0))
            continue
        except queue.Empty:
            pass
        for process in [p for p in workers if not p.is_alive()]:
            while True:  # what it said before it exited comes first
                try:
                    handle(*results.get(timeout=0.1))
                except queue.Empty:
                    break
            device = workers.pop(process)
            if device in holding:  # it died holding a model, without a word
                failures.append(Failure(holding.pop(device), device, f"worker died (exit code {process.exitcode})"))
    return failures


def _worker(device_name, jobs, results, recipe, data, output_dir, forced_precision, parent_pid, threads) -> None:
    from spinecad.inference.precision import choose_precision
    from train.loop import train_model

    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    sys.stdout.reconfigure(line_buffering=True)
    device = torch.device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(threads)
    precision = choose_precision(device, training=True, forced=forced_precision)
    while (spec := jobs.get()) is not None:
        results.put(("started", device_name, spec.name, ""))
        try:
            outcome = train_model(spec, recipe, data, output_dir, device=device, precision=precision, progress=False)
        except Exception as error:  # noqa: BLE001 - any failure of one model is reported; the worker goes on
            traceback.print_exc()
            results.put(("failed", device_name, spec.name, f"{type(error).__name__}: {error}"))
        else:
            results.put(("done", device_name, spec.name,
                         f"best epoch {outcome.best_epoch} (validation macro-F1 {outcome.best_score:.3f})"))


def _exit_with_parent(parent_pid: int) -> None:
    """A worker must not outlive a killed run: its rerun would find two writers of the same state file."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)
