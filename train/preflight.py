"""Checks made before any training starts, so a bad input is one clear message, not a crash hours into a run:
the data folder, the devices, a writable output folder, and free space for the cache and the checkpoints."""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from spinecad.models.model import HeadConfig, ModelConfig, SpineCADModel
from spinecad.models.registry import BackboneSpec
from train.rsna import DatasetLayoutError

# Resume state per parameter: fp32 weights and AdamW's two moments; the checkpoint holds the weights once more.
STATE_BYTES_PER_PARAMETER, CHECKPOINT_BYTES_PER_PARAMETER = 12, 4
SPACE_MARGIN = 1.1  # ask for 10% more than the estimate


class PreflightError(ValueError):
    """An input that would make the run fail later; the message says what to change."""


def check_data_dir(data_dir: Path) -> None:
    """The RSNA folder must hold train.csv (the labels) before anything else is read."""
    if not data_dir.is_dir():
        raise DatasetLayoutError(f"--data-dir {data_dir} is not a folder.")
    if not (data_dir / "train.csv").is_file():
        raise DatasetLayoutError(
            f"{data_dir} has no train.csv: --data-dir must be the RSNA 2024 Kaggle folder (train.csv, "
            "train_series_descriptions.csv, train_label_coordinates.csv, train_images/).")


def parse_devices(option: str | None) -> list[torch.device]:
    """``--devices``: a comma-separated list (cpu, cuda, cuda:N; cpu may repeat); default every visible GPU, else
    the CPU. A GPU that is not there is refused here."""
    if not option:
        count = torch.cuda.device_count()
        return [torch.device("cuda", index) for index in range(count)] or [torch.device("cpu")]
    devices = []
    for name in (part.strip() for part in option.split(",")):
        try:
            device = torch.device(name)
        except RuntimeError:
            raise PreflightError(f"--devices: {name!r} is not a device; use cpu, cuda or cuda:N.") from None
        check_device(device, "--devices")
        devices.append(device)
    cuda = [device for device in devices if device.type == "cuda"]
    if len(set(cuda)) != len(cuda):
        raise PreflightError("--devices names the same GPU twice; give each GPU once (only cpu may repeat).")
    return devices


def check_device(device: torch.device, option: str) -> None:
    """Refuse a CUDA device this machine does not have."""
    if device.type != "cuda":
        return
    count = torch.cuda.device_count()
    if count == 0:
        raise PreflightError(f"{option} names {device}, but PyTorch sees no CUDA GPU on this machine "
                             f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use cpu.")
    if device.index is not None and device.index >= count:
        visible = ", ".join(f"cuda:{index}" for index in range(count))
        raise PreflightError(f"{option} names {device}, but this machine has {count} GPU(s): {visible}.")


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and write one file in it; refuse it with the OS's reason otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise PreflightError(f"Cannot write to the {what} {folder}: {error.strerror or error}. "
                             "Choose a writable folder.") from None


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds ``folder`` (or the nearest parent that exists)."""
    existing = folder.resolve()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_space(needs: Sequence[tuple[Path, int, str]]) -> None:
    """``needs``: (folder, bytes it will take, what for). Folders on one disk add up."""
    by_disk: dict[int, list[tuple[Path, int, str]]] = {}
    for folder, needed, what in needs:
        existing = folder.resolve()
        while not existing.exists():
            existing = existing.parent
        by_disk.setdefault(existing.stat().st_dev, []).append((folder, needed, what))
    for entries in by_disk.values():
        needed = int(sum(n for _, n, _ in entries) * SPACE_MARGIN)
        free = free_bytes(entries[0][0])
        if needed > free:
            parts = " + ".join(f"{what} {human_bytes(n)} in {folder}" for folder, n, what in entries)
            raise PreflightError(f"Not enough disk space: the run needs {human_bytes(needed)} ({parts}, plus 10%), "
                                 f"but only {human_bytes(free)} is free there. Free some space or pass --cache-dir "
                                 "/ --output-dir on a larger disk.")


def cache_bytes(n_images: int, size: int) -> int:
    """The decoded-slice cache: one uint8 ``size`` x ``size`` image per file."""
    return n_images * size * size


def parameter_count(spec: BackboneSpec, head: HeadConfig) -> int:
    """Parameters of the model, counted on the meta device (nothing is allocated or initialised)."""
    with torch.device("meta"):
        model = SpineCADModel(ModelConfig(backbone=spec.to_dict(), head=head))
    return sum(parameter.numel() for parameter in model.parameters())


def output_bytes(specs: Sequence[BackboneSpec], head: HeadConfig) -> int:
    """Checkpoints and resume states of ``specs``, plus one staged copy of the largest state while it is replaced."""
    counts = [parameter_count(spec, head) for spec in specs]
    per_model = STATE_BYTES_PER_PARAMETER + CHECKPOINT_BYTES_PER_PARAMETER
    return sum(counts) * per_model + max(counts, default=0) * STATE_BYTES_PER_PARAMETER


def human_bytes(n: float) -> str:
    """1234567 -> "1.2 MB" (decimal units, as disks are sold and df -H reports)."""
    power = min(int(math.log10(max(n, 1)) // 3), 3)
    return f"{n:.0f} B" if power == 0 else f"{n / 1000 ** power:.1f} {('KB', 'MB', 'GB')[power - 1]}"
