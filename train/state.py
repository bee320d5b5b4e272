"""Resume state of one model's training run: one safetensors file (tensors + JSON metadata), replaced atomically.

It holds the model and optimizer tensors, the RNG states, the loss scaler's state (fp16 training) and the history at
the end of the last finished epoch, so a run killed at any moment restarts from there and ends exactly as an
uninterrupted run would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from spinecad.atomic import atomic_path, remove_partials

_MODEL, _OPTIMIZER, _RNG = "model.", "optimizer.", "rng."


@dataclass
class ResumeState:
    """What a restarted run needs: the next epoch, the history so far and the best score seen."""

    next_epoch: int
    history: list[dict]
    best_score: float
    best_epoch: int


def save_state(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    state: ResumeState,
    fingerprint: str,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write the whole state to ``path`` atomically; ``scaler``'s loss scale and growth counter go with it."""
    tensors = {_MODEL + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for name, value in values.items():
            tensors[f"{_OPTIMIZER}{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors.update({_RNG + k: v.cpu().contiguous() for k, v in rng.items()})
    metadata = {
        "fingerprint": fingerprint,
        "param_groups": json.dumps(optimizer_state["param_groups"]),
        "resume": json.dumps(state.__dict__),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None else {}),
    }
    with atomic_path(path) as staging:
        safetensors.torch.save_file(tensors, str(staging), metadata=metadata)


def load_state(
    path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, fingerprint: str,
    scaler: torch.amp.GradScaler | None = None, writer: bool = True,
) -> tuple[ResumeState, dict[str, torch.Tensor]] | None:
    """Restore model, optimizer and (when given and enabled) the loss scaler from ``path``; None when there is no
    usable state for this exact run.

    The writer (the one process of a run that writes the state) first deletes the staged copies a killed run left
    beside ``path``; the other ranks of a data-parallel run only read.
    """
    if writer:
        remove_partials(path)
    if not path.exists():
        return None
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("fingerprint") != fingerprint:
            return None  # another recipe or dataset: start afresh rather than mix runs
        tensors = safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError):
        return None  # unreadable state is never trusted
    model.load_state_dict({k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}, strict=True)
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIMIZER):
            index, name = key[len(_OPTIMIZER):].split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": json.loads(metadata["param_groups"])})
    scaler_state = json.loads(metadata.get("scaler", "{}"))
    if scaler is not None and scaler.is_enabled() and scaler_state:
        scaler.load_state_dict(scaler_state)
    rng = {k[len(_RNG):]: v for k, v in tensors.items() if k.startswith(_RNG)}
    return ResumeState(**json.loads(metadata["resume"])), rng
