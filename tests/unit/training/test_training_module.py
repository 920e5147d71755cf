"""The two-stage recipe shared by DeSTSeg and PFADSeg: arguments (declared once), schedule, optimisers, callbacks."""

import inspect
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torchvision.transforms.v2 import Resize

from anomalib_destseg import DeSTSeg, PFADSeg
from anomalib_destseg.components import Stage
from anomalib_destseg.training import TwoStageTraining
from anomalib_destseg.training.callbacks import TeacherWeights, usable_batch_size

RECIPE = [name for name in inspect.signature(TwoStageTraining.__init__).parameters if name != "self"]


# --- arguments -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"student_steps": -1}, "student_steps"),
        ({"segmentation_steps": -5}, "segmentation_steps"),
        ({"student_steps": 0, "segmentation_steps": 0}, "at least 1"),
        ({"student_steps": 2.5}, "student_steps"),
        ({"rotation": "sideways"}, "rotation"),
        ({"beta_range": (0.9, 0.1)}, "beta_range"),
        ({"beta_range": (0.0, 1.5)}, "beta_range"),
        ({"anomaly_probability": 2.0}, "anomaly_probability"),
        ({"student_lr": 0.0}, "student_lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"top_k": 0}, "top_k"),
        ({"focal_gamma": -1.0}, "gamma"),
        ({"output_map": "DeST"}, "output_map must be one of 'segmentation', 'dest'"),
    ],
)
@pytest.mark.parametrize("model_class", [DeSTSeg, PFADSeg])
def test_bad_arguments_raise_at_construction(model_class: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model_class(**kwargs)


def test_every_argument_is_declared_once_and_reaches_both_models() -> None:
    """DeSTSeg declares none of its own, PFADSeg only its two; anomalib's CLI still sees every one of them."""
    from jsonargparse import ArgumentParser

    assert list(inspect.signature(DeSTSeg.__init__).parameters) == ["self", "kwargs"]
    assert list(inspect.signature(PFADSeg.__init__).parameters) == ["self", "decoder_input", "fusion", "kwargs"]
    for model_class, own in ((DeSTSeg, []), (PFADSeg, ["decoder_input", "fusion"])):
        parser = ArgumentParser()
        parser.add_class_arguments(model_class, "model")
        flags = {action.dest.removeprefix("model.") for action in parser._actions if action.dest.startswith("model.")}
        assert set(RECIPE) | set(own) <= flags
        help_text = parser.format_help()
        assert "Optimiser steps of stage 1 (student)" in help_text  # the recipe's own docstring
    module = PFADSeg(decoder_input="student_encoder", fusion="concat", residual_lr=0.05)
    assert (module.hparams.decoder_input, module.hparams.fusion, module.hparams.residual_lr) == (
        "student_encoder",
        "concat",
        0.05,
    )


@pytest.mark.parametrize("model_class", [DeSTSeg, PFADSeg])
def test_output_map_reaches_the_torch_model_and_names_the_second_maps_metrics(model_class: type) -> None:
    default = model_class()
    assert default.model.output_map == "segmentation"
    names = [metric.name for metric in default.evaluator.test_metrics]
    second = ["image_AUROC", "pixel_AUROC", "pixel_AUPR", "pixel_AUPRO", "pixel_IAP", "pixel_IAP90"]
    assert names[8:] == [f"DeST_{name}" for name in second]
    assert default.evaluator.test_metrics[9].fields == ["dest_anomaly_map", "gt_mask"]
    dest = model_class(output_map="dest")
    assert dest.model.output_map == "dest"
    assert [metric.name for metric in dest.evaluator.test_metrics][8:] == [f"Seg_{name}" for name in second]
    assert dest.evaluator.test_metrics[8].fields == ["segmentation_pred_score", "gt_label"]
    alone = model_class(output_map="dest", second_map=False)
    assert len(alone.evaluator.test_metrics) == 8 and alone.evaluator.second_map is None


def test_anomalib_lists_and_builds_both_models_by_name() -> None:
    from anomalib.models import get_model, list_models

    listed = list_models(case="pascal")
    assert {"DeSTSeg", "PFADSeg"} <= listed
    assert not {"TwoStageTraining", "TwoStageSegmentationModule"} & listed  # nothing abstract of ours
    assert isinstance(get_model("DeSTSeg", student_steps=3), DeSTSeg)
    assert get_model("pfadseg", fusion="concat").hparams.fusion == "concat"


@pytest.mark.parametrize("size", [(250, 256), (256, 100), (0, 64)])
def test_pre_processor_size_must_be_a_multiple_of_32(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        DeSTSeg.configure_pre_processor(size)


def test_default_pre_processor_resizes_to_256_with_antialiasing_without_normalising() -> None:
    transforms = DeSTSeg.configure_pre_processor().transform.transforms
    assert len(transforms) == 1 and isinstance(transforms[0], Resize)
    assert list(transforms[0].size) == [256, 256] and transforms[0].antialias
    assert DeSTSeg().image_size == (256, 256)
    assert DeSTSeg(pre_processor=False).image_size is None


# --- schedule and optimisers ----------------------------------------------------------------------------------------
def test_trainer_arguments_and_stages_follow_the_steps() -> None:
    model = DeSTSeg(student_steps=3, segmentation_steps=4)
    arguments = model.trainer_arguments
    assert arguments["max_steps"] == 7 == model.total_steps
    # validation when training stops after the last step, never by a batch count (skipped batches count there)
    assert arguments["val_check_interval"] > 2**60 and arguments["check_val_every_n_epoch"] is None
    assert arguments["num_sanity_val_steps"] == 0
    assert [Stage.at(step, 3) for step in range(5)] == [Stage.STUDENT] * 3 + [Stage.SEGMENTATION] * 2
    assert (Stage.STUDENT.number, Stage.SEGMENTATION.number) == (1, 2)


def test_configure_optimizers_uses_the_hyperparameters() -> None:
    model = DeSTSeg(student_lr=0.2, residual_lr=0.05, head_lr=0.005, momentum=0.5, weight_decay=0.0)
    student_optimizer, segmentation_optimizer = model.configure_optimizers()
    assert student_optimizer.param_groups[0]["lr"] == 0.2
    assert [g["lr"] for g in segmentation_optimizer.param_groups] == [0.05, 0.005]
    groups = [*student_optimizer.param_groups, *segmentation_optimizer.param_groups]
    assert all(g["momentum"] == 0.5 and g["weight_decay"] == 0.0 for g in groups)


def test_the_torch_model_owns_the_training_passes(teacher_weights: Path) -> None:
    """Stage 1: student features against the teacher's of the clean image; stage 2: probabilities, student frozen."""
    model = DeSTSeg().model
    model.teacher.load_weights(teacher_weights)
    clean, corrupted = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    model.set_stage(Stage.STUDENT)
    student, target = model.student_pass(corrupted, clean)
    assert [s.shape[1] for s in student] == [64, 128, 256] and all(s.requires_grad for s in student)
    assert not any(t.requires_grad for t in target)
    assert torch.equal(target[0], model.teacher(model.normalize(clean))[0])
    model.set_stage(Stage.SEGMENTATION)
    assert model.student_encoder.training is False and model.segmentation_network.training is True
    probabilities = model.segmentation_pass(corrupted)
    assert probabilities.shape == (2, 1, 16, 16) and probabilities.requires_grad
    probabilities.sum().backward()
    assert all(p.grad is None for p in model.student_decoder.parameters())
    assert all(p.grad is not None for p in model.segmentation_network.parameters())


# --- callbacks --------------------------------------------------------------------------------------------------------
def test_callbacks_come_with_the_model() -> None:
    names = [type(callback).__name__ for callback in DeSTSeg().configure_callbacks()]
    expected = ["TeacherWeights", "DataChecks", "TilingChecks", "AnomalyStream", "TrainingProgress"]
    expected += ["NonFiniteGuard", "SafeCheckpointFiles", "PeriodicCheckpoint"]
    assert names[-8:] == expected
    assert names[:2] == ["AntialiasedPreProcessor", "RawScorePostProcessor"]


def test_teacher_weights_load_at_setup_and_a_random_teacher_is_refused(teacher_weights: Path) -> None:
    model = DeSTSeg(teacher_weights=str(teacher_weights))
    guard = TeacherWeights()
    for hook in (guard.on_test_start, guard.on_predict_start, guard.on_validation_start, guard.on_train_start):
        with pytest.raises(RuntimeError, match="random teacher"):
            hook(None, model)
    guard.setup(None, model, "test")
    assert bool(model.model.teacher.pretrained)
    state = torch.load(teacher_weights, map_location="cpu", weights_only=True)
    assert torch.equal(model.model.teacher.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    missing = DeSTSeg(teacher_weights="/nowhere/resnet18.pth")
    guard.setup(None, missing, "fit")  # kept: a checkpoint may still provide the weights
    with pytest.raises(FileNotFoundError, match=r"/nowhere/resnet18\.pth"):
        guard.on_train_start(None, missing)


def test_usable_batch_size(caplog: pytest.LogCaptureFixture) -> None:
    datamodule = SimpleNamespace(train_batch_size=8, train_data=list(range(12)))
    assert usable_batch_size(datamodule) == 8
    with caplog.at_level(logging.WARNING):
        # The distributed sampler gives each of two processes 6 images: each trains on batches of 6.
        assert usable_batch_size(datamodule, processes=2) == 6
    assert "gives each of 2 processes 6 images, fewer than train_batch_size=8" in caplog.text
    assert usable_batch_size(SimpleNamespace(train_batch_size=6, train_data=list(range(11))), processes=2) == 6
    with pytest.raises(ValueError, match="is empty"):
        usable_batch_size(SimpleNamespace(train_batch_size=8, train_data=[]))
    with pytest.raises(ValueError, match="train_batch_size is 1"):
        usable_batch_size(SimpleNamespace(train_batch_size=1, train_data=list(range(5))))
    assert usable_batch_size(None) == 2


def test_the_arguments_page_is_generated_from_the_code() -> None:
    import runpy

    from helpers import REPO

    page = runpy.run_path(str(REPO / "docs" / "make_arguments.py"))["main"]()
    assert (REPO / "docs" / "arguments.md").read_text() == page, (
        "run: python docs/make_arguments.py > docs/arguments.md"
    )
    assert all(f"| `{name}` |" in page for name in RECIPE)
