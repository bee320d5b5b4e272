"""The fp16 training path (autocast + ``torch.amp.GradScaler``, what a T4 or P100 gets) run on the CPU: it trains,
its loss-scaling state goes into the resume state, and a run stopped after an epoch resumes to the same weights
and the same scaler state as the run that went through."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from spinecad.inference.precision import FP16_SCALED, FP32
from spinecad.models.registry import get_spec
from train.loop import TrainingData, train_model
from train.recipe import DEMO

pytestmark = pytest.mark.slow

SPEC = "swin_b-cpu"  # the CPU sibling that runs fp16 fastest on the CPU (fp16 is emulated there)


class Stop(Exception):
    """Ends a run from its log, as a kill after the first epoch's state was written would."""


def stop_at(marker: str, log: list[str]):
    def record(message: str) -> None:
        log.append(message)
        if marker in message:
            raise Stop

    return record


@pytest.fixture(scope="module")
def training(tmp_path_factory) -> TrainingData:
    from train.phantom import write_phantom_dataset
    from train.pipeline import prepare_data
    from train.rsna import build_sample_index

    root = tmp_path_factory.mktemp("fp16")
    write_phantom_dataset(root / "phantom", n_studies=12, seed=5)
    data = prepare_data(build_sample_index(root / "phantom"), root, root / "cache", get_spec(SPEC).input_size,
                        seed=42, progress=False, log=lambda message: None)
    return TrainingData(data.dataset("train"), data.dataset("val"), {"dataset": "phantom"}, data.fingerprint())


def scaler_state(out: Path) -> dict:
    with safetensors.safe_open(str(out / ".state" / f"{SPEC}.safetensors"), framework="pt") as handle:
        return json.loads(handle.metadata()["scaler"])


def test_fp16_with_loss_scaling_trains_on_the_cpu_and_resumes_exactly(training, tmp_path):
    recipe = replace(DEMO.with_epochs(2), batch_size=16)
    spec, cpu = get_spec(SPEC), torch.device("cpu")
    log: list[str] = []
    whole = train_model(spec, recipe, training, tmp_path / "whole", device=cpu, precision=FP16_SCALED,
                        progress=False, log=log.append)
    assert f"[{SPEC}] fp16 autocast on cpu with loss scaling" in log
    assert all(np.isfinite(row["train_loss"]) for row in whole.history)
    steps = 2 * -(-len(training.train) // recipe.batch_size)
    scaled = scaler_state(tmp_path / "whole")
    # The scaler ran every step: each one either grew its counter or (on an fp16 overflow) halved the scale.
    assert scaled["scale"] * 2 ** scaled["_growth_tracker"] != 65536.0 or scaled["_growth_tracker"] == steps
    assert 0 < scaled["_growth_tracker"] <= steps

    with pytest.raises(Stop):
        train_model(spec, recipe, training, tmp_path / "cut", device=cpu, precision=FP16_SCALED, progress=False,
                    log=stop_at(f"[{SPEC}] epoch 2/2", []))
    after_first = scaler_state(tmp_path / "cut")
    assert after_first["_growth_tracker"] > 0  # a fresh scaler would start again at 0
    resumed = train_model(spec, recipe, training, tmp_path / "cut", device=cpu, precision=FP16_SCALED,
                          progress=False, log=lambda message: None)
    untimed = [[{k: v for k, v in row.items() if k != "seconds"} for row in run.history] for run in (whole, resumed)]
    assert resumed.resumed_from_epoch == 1 and untimed[0] == untimed[1]
    assert scaler_state(tmp_path / "cut") == scaled
    first, again = (safetensors.torch.load_file(out / SPEC / "model.safetensors") for out in (tmp_path / "whole",
                                                                                              tmp_path / "cut"))
    assert all(torch.equal(first[key], again[key]) for key in first)

    # The same epoch in fp32 computes something else: the fp16 path was not silently fp32.
    with pytest.raises(Stop):
        train_model(spec, recipe, training, tmp_path / "fp32", device=cpu, precision=FP32, progress=False,
                    log=stop_at(f"[{SPEC}] epoch 2/2", []))
    assert scaler_state(tmp_path / "fp32") == {}  # fp32 trains without a scaler
    with safetensors.safe_open(str(tmp_path / "fp32" / ".state" / f"{SPEC}.safetensors"), framework="pt") as handle:
        fp32_epoch = json.loads(handle.metadata()["resume"])["history"][0]
    assert fp32_epoch["train_loss"] != whole.history[0]["train_loss"]
    assert fp32_epoch["train_loss"] == pytest.approx(whole.history[0]["train_loss"], rel=0.05)


def test_the_localiser_trains_in_fp16_with_loss_scaling_and_keeps_the_scaler_in_its_resume_state(tmp_path):
    from spinecad.models.localizer import LOCALIZER_BACKBONES, LocalizerConfig
    from train.localizer import DECODER_CHANNELS
    from train.localizer_train import DEMO_RECIPE, PointSet, train_localizer

    generator = torch.Generator().manual_seed(0)
    size = 64
    images = torch.randint(0, 256, (8, 1, size, size), dtype=torch.uint8, generator=generator)
    points = torch.rand(8, 5, 2, generator=generator) * (size - 1)
    data = PointSet(images, points)
    config = LocalizerConfig(backbone=LOCALIZER_BACKBONES["cpu"].to_dict(), decoder_channels=DECODER_CHANNELS["cpu"])
    recipe = replace(DEMO_RECIPE, epochs=2, batch_size=4)
    state = tmp_path / ".state" / "localizer.safetensors"
    histories = {}
    for precision in (FP16_SCALED, FP32):
        _, histories[precision.name] = train_localizer(
            config, recipe, data, data, tmp_path / precision.name, state.with_name(f"{precision.name}.safetensors"),
            device=torch.device("cpu"), facts={}, log=lambda message: None, precision=precision)
    assert all(np.isfinite(row["train_loss"]) for row in histories["fp16"])
    with safetensors.safe_open(str(state.with_name("fp16.safetensors")), framework="pt") as handle:
        scaled = json.loads(handle.metadata()["scaler"])
    assert 0 < scaled["_growth_tracker"] <= 2 * 2 and scaled["scale"] > 0  # the scaler ran every step
    with safetensors.safe_open(str(state.with_name("fp32.safetensors")), framework="pt") as handle:
        assert json.loads(handle.metadata()["scaler"]) == {}
    # The fp16 path really ran in fp16: the same steps in fp32 give another loss.
    assert histories["fp16"][0]["train_loss"] != histories["fp32"][0]["train_loss"]
