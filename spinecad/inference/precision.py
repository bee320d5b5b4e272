"""Which floating-point precision a device runs in: one function, decided from what the hardware does natively.

    CUDA, compute capability >= 8.0 (Ampere, Hopper, ...)  -> bf16 autocast
    CUDA, older (T4, P100, V100)                          -> fp16 autocast (+ GradScaler when training)
    CPU with native bf16 (AVX512-BF16 / AMX, Arm BF16)     -> bf16 autocast for inference, where the backbone allows it
    any other CPU, and CPU training                        -> fp32

``SPINECAD_PRECISION=fp32`` (or ``forced="fp32"``) forces fp32 everywhere; ``bf16`` / ``fp16`` force those where
the device can run them. Emulated bf16 is never chosen by itself: on a CPU without it, bf16 is slower than fp32.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass

import torch

ENV_VAR = "SPINECAD_PRECISION"
CHOICES = ("auto", "fp32", "bf16", "fp16")
# bf16 arithmetic is native from Ampere on (sm_80); earlier GPUs emulate it, slower than fp32.
CUDA_BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Precision:
    """A precision to run in: its name, the autocast dtype (None: plain fp32), and whether training scales the loss."""

    name: str  # "fp32", "bf16" or "fp16"
    dtype: torch.dtype | None  # the autocast dtype; None = no autocast
    grad_scaler: bool = False  # training must use torch.amp.GradScaler (fp16 gradients underflow without it)

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """The autocast context for ``device`` (a null context for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=self.dtype)


FP32 = Precision("fp32", None)
BF16 = Precision("bf16", torch.bfloat16)
FP16 = Precision("fp16", torch.float16)
FP16_SCALED = Precision("fp16", torch.float16, grad_scaler=True)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (x86: AVX512-BF16 or AMX; Arm: the BF16 extension).

    oneDNN's own check (``_is_mkldnn_bf16_supported``) accepts any AVX-512 CPU, where bf16 is emulated and slower
    than fp32, so on x86 the instruction sets are asked for directly.
    """
    if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return True  # Arm: oneDNN's check is the BF16 extension itself


def cuda_capability(device: torch.device | str) -> tuple[int, int]:
    """The compute capability (major, minor) of a CUDA device."""
    return tuple(torch.cuda.get_device_capability(torch.device(device)))  # type: ignore[return-value]


def forced_precision() -> str | None:
    """The precision ``SPINECAD_PRECISION`` forces, or None when unset or ``auto``; a ValueError for anything else."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value not in ("", *CHOICES):
        raise ValueError(f"{ENV_VAR}={value!r} is not a precision; expected one of {', '.join(CHOICES)}.")
    return None if value in ("", "auto") else value


def choose_precision(
    device: torch.device | str,
    *,
    training: bool = False,
    capability: tuple[int, int] | None = None,
    cpu_bf16: bool | None = None,
    forced: str | None = None,
    backbone_bf16: bool = True,
) -> Precision:
    """The precision to run on ``device``.

    ``capability`` (CUDA compute capability) and ``cpu_bf16`` (CPU has native bf16) default to the hardware's
    own answers; tests pass them. ``forced`` defaults to ``SPINECAD_PRECISION``. ``backbone_bf16`` is the
    backbone's registry verdict on CPU bf16 inference (measured agreement with fp32); it does not affect CUDA.
    """
    device = torch.device(device)
    if forced is None:
        forced = forced_precision()
    elif forced not in CHOICES:
        raise ValueError(f"Unknown precision {forced!r}; expected one of {', '.join(CHOICES)}.")
    if forced == "fp32":
        return FP32
    if device.type == "cuda":
        capability = tuple(capability or cuda_capability(device))
        native_bf16 = capability >= CUDA_BF16_CAPABILITY
        if forced == "bf16" and not native_bf16:
            raise ValueError(f"bf16 was asked for, but {device} (compute capability {capability[0]}.{capability[1]}) "
                             "has no native bf16; use fp16 or fp32.")
        if forced == "fp16" or not native_bf16:
            return FP16_SCALED if training else FP16
        return BF16
    if device.type == "cpu":
        if forced == "fp16":
            raise ValueError("fp16 is a GPU precision; on the CPU use bf16 or fp32.")
        if forced == "bf16":
            return BF16
        native = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
        return BF16 if native and backbone_bf16 and not training else FP32
    if forced in ("bf16", "fp16"):
        raise ValueError(f"{forced} is not supported on {device.type}; only fp32 is.")
    return FP32
