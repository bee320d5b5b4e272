"""The precision choice against device capabilities: every GPU generation users run on, CPUs with and without bf16."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from spinecad.inference.precision import (
    ENV_VAR,
    Precision,
    choose_precision,
    cpu_has_native_bf16,
)

# (compute capability, GPUs people run on) -> expected inference precision
CUDA_GENERATIONS = [
    ((6, 0), "P100 (Kaggle)", "fp16"),
    ((7, 0), "V100", "fp16"),
    ((7, 5), "T4 (Colab, Kaggle, Spaces)", "fp16"),
    ((8, 0), "A100", "bf16"),
    ((8, 6), "A10G / RTX 30", "bf16"),
    ((8, 9), "L4 / RTX 40", "bf16"),
    ((9, 0), "H100 / H200 (ZeroGPU)", "bf16"),
    ((10, 0), "B200", "bf16"),
]


@pytest.fixture(autouse=True)
def _no_forced_precision(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.mark.parametrize(("capability", "gpu", "expected"), CUDA_GENERATIONS)
def test_cuda_inference_uses_bf16_only_where_native(capability, gpu, expected):
    chosen = choose_precision("cuda", capability=capability)
    assert chosen.name == expected, gpu
    assert chosen.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[expected]
    assert not chosen.grad_scaler  # inference never scales a loss


@pytest.mark.parametrize(("capability", "gpu", "expected"), CUDA_GENERATIONS)
def test_cuda_training_scales_the_loss_exactly_when_fp16(capability, gpu, expected):
    chosen = choose_precision(torch.device("cuda:0"), training=True, capability=capability)
    assert chosen.name == expected, gpu
    assert chosen.grad_scaler == (expected == "fp16")


def test_cuda_ignores_the_cpu_verdict_of_a_backbone():
    assert choose_precision("cuda", capability=(9, 0), backbone_bf16=False).name == "bf16"


@pytest.mark.parametrize(("native", "allowed", "expected"), [
    (True, True, "bf16"), (True, False, "fp32"), (False, True, "fp32"), (False, False, "fp32"),
])
def test_cpu_inference_needs_native_bf16_and_the_backbone_row(native, allowed, expected):
    chosen = choose_precision("cpu", cpu_bf16=native, backbone_bf16=allowed)
    assert chosen.name == expected
    assert chosen.dtype == (torch.bfloat16 if expected == "bf16" else None)


def test_cpu_training_stays_fp32():
    assert choose_precision("cpu", training=True, cpu_bf16=True) == Precision("fp32", None, False)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_environment_forces_fp32(monkeypatch, device):
    monkeypatch.setenv(ENV_VAR, "FP32")
    assert choose_precision(device, capability=(9, 0), cpu_bf16=True).name == "fp32"
    assert choose_precision(device, training=True, capability=(7, 5)) == Precision("fp32", None, False)


def test_forced_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "fp32")
    assert choose_precision("cuda", capability=(9, 0), forced="fp16").name == "fp16"
    assert choose_precision("cuda", capability=(9, 0), forced="fp16", training=True).grad_scaler
    assert choose_precision("cpu", cpu_bf16=False, forced="bf16").name == "bf16"


def test_auto_is_the_default(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "auto")
    assert choose_precision("cuda", capability=(7, 5)).name == "fp16"


@pytest.mark.parametrize(("device", "forced", "capability", "says"), [
    ("cuda", "bf16", (7, 5), "no native bf16"),
    ("cpu", "fp16", None, "GPU precision"),
    ("cpu", "int8", None, "Unknown precision"),
])
def test_impossible_requests_are_refused_clearly(device, forced, capability, says):
    with pytest.raises(ValueError, match=says):
        choose_precision(device, forced=forced, capability=capability)


def test_a_misspelt_environment_value_is_refused(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "bfloat")
    with pytest.raises(ValueError, match=f"{ENV_VAR}='bfloat'"):
        choose_precision("cpu")


def test_this_cpu_is_detected_consistently():
    native = cpu_has_native_bf16()
    if platform.machine() == "x86_64" and Path("/proc/cpuinfo").exists():
        flags = Path("/proc/cpuinfo").read_text().split()
        assert native == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert choose_precision("cpu").name == ("bf16" if native else "fp32")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_autocast_context_runs_the_matmul_in_that_dtype(precision):
    chosen = choose_precision("cpu", forced=precision)
    a = torch.randn(4, 4)
    with chosen.autocast("cpu"):
        out = a @ a
    assert out.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
