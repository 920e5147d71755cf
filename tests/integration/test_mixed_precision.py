"""Mixed precision through Lightning's ``precision`` flag: bf16-mixed on CPU; fp16 (``16-mixed``) needs a GPU.

Resume, determinism and the non-finite guard in bf16-mixed are tested with the fp32 cases (``test_resume.py``,
``test_determinism.py``, ``test_guards.py``); the accuracy of bf16 inference against fp32 in ``test_learning.py``.
"""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import quiet_cpu_engine, tiny_datamodule, tiny_model
from lightning.pytorch import Callback, seed_everything

from anomalib_destseg import DeSTSeg, PFADSeg
from anomalib_destseg.components import took_a_step
from anomalib_destseg.training.callbacks import ChannelsLast, NonFiniteGuard


def _model(model_class: type, teacher_weights: Path, steps: int):
    return tiny_model(model_class, teacher_weights, student_steps=steps, segmentation_steps=steps)


class LossDtypes(Callback):
    """The dtype and value of every step's loss, as the module hands it to the non-finite guard."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if took_a_step(outputs):
            self.losses.append(pl_module.step_loss)


@pytest.mark.parametrize("model_class", [DeSTSeg, PFADSeg], ids=lambda cls: cls.__name__)
def test_bf16_mixed_trains_tests_and_saves_float32(
    model_class: type, tiny_dataset: Path, teacher_weights: Path, tmp_path: Path
) -> None:
    seed_everything(0)
    model = _model(model_class, teacher_weights, steps=2)
    losses = LossDtypes()
    engine = quiet_cpu_engine(tmp_path, callbacks=(losses, ChannelsLast()), precision="bf16-mixed")
    datamodule = tiny_datamodule(tiny_dataset)
    engine.fit(model, datamodule=datamodule)
    assert [loss.dtype for loss in losses.losses] == [torch.float32] * 4  # losses computed in float32
    assert all(math.isfinite(loss.item()) for loss in losses.losses)
    (metrics,) = engine.test(model, datamodule=datamodule)
    assert 0 <= metrics["image_AUROC"] <= 1 and 0 <= metrics["pixel_AUPR"] <= 1
    checkpoint = torch.load(engine.best_model_path, map_location="cpu", weights_only=False)
    floats = {value.dtype for value in checkpoint["state_dict"].values() if value.is_floating_point()}
    assert floats == {torch.float32}
    assert model.model.segmentation_network.head[1].weight.is_contiguous(memory_format=torch.channels_last)


def test_a_skipped_fp16_scaler_step_is_not_an_error() -> None:
    """With fp16 gradient scaling an overflowing gradient (finite loss) is skipped by the scaler; a NaN loss stops."""
    model = DeSTSeg()
    model.step_loss = torch.tensor(0.5)
    parameter = next(model.model.segmentation_network.parameters())
    parameter.grad = torch.full_like(parameter, math.inf)
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scaled = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=object()))
    NonFiniteGuard().on_before_optimizer_step(scaled, model, optimizer)  # no error: the scaler skips the step
    model.step_loss = torch.tensor(math.nan)
    guard = NonFiniteGuard()
    trainer = SimpleNamespace(
        precision_plugin=scaled.precision_plugin, checkpoint_callback=None, default_root_dir="/nonexistent"
    )
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at optimiser step 0"):
        guard.on_before_optimizer_step(trainer, model, optimizer)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed (fp16 with gradient scaling) needs a CUDA GPU")
def test_fp16_mixed_trains_on_a_gpu(tiny_dataset: Path, teacher_weights: Path, tmp_path: Path) -> None:
    from anomalib.engine import Engine

    seed_everything(0)
    model = _model(DeSTSeg, teacher_weights, steps=3)
    engine = Engine(default_root_dir=tmp_path, accelerator="gpu", devices=1, logger=False, precision="16-mixed")
    datamodule = tiny_datamodule(tiny_dataset)
    engine.fit(model, datamodule=datamodule)
    assert model.global_step == 6
    (metrics,) = engine.test(model, datamodule=datamodule)
    assert 0 <= metrics["image_AUROC"] <= 1
