"""DeSTSeg and PFADSeg as anomalib models, run end to end with anomalib's Engine: one shared test run for both.

One module-scoped run per model (MVTecAD datamodule, 15 student + 2 segmentation steps at 64x64) records every
optimiser step and serves most tests: which tensors each stage changes, the student loss curve, the optimisers,
progress lines, metrics, visualisations, predictions and the checkpoint. A Folder run checks anomalib's other
datamodule; small training sets train (with a warning) instead of being refused.
"""

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from anomalib.data import Folder
from anomalib.engine import Engine
from anomalib.pre_processing import PreProcessor
from helpers import TINY_SIZE, quiet_cpu_engine, tiny_datamodule, tiny_model
from lightning.pytorch import Callback
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_destseg import DeSTSeg, PFADSeg
from anomalib_destseg.components import Stage, took_a_step
from anomalib_destseg.data import make_synthetic_dataset
from anomalib_destseg.metrics import paper_evaluator
from anomalib_destseg.training.callbacks import progress

MODEL_CLASSES = [DeSTSeg, PFADSeg]
STUDENT_STEPS = 15  # enough for the student loss to fall clearly
SEGMENTATION_STEPS = 2
REQUIRED_METRICS = {"image_AUROC", "pixel_AUROC", "pixel_AUPR"}  # pixel_AUPR is the paper's pixel AP


class StepRecorder(Callback):
    """Record, for every optimiser step, its stage, its loss and the names of the model tensors it changed."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self._before: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._before = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        self._step = trainer.global_step
        self._stage = Stage.at(trainer.global_step, pl_module.hparams.student_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not took_a_step(outputs):
            return
        after = pl_module.model.state_dict()
        changed = {k for k, v in after.items() if not torch.equal(v, self._before[k])}
        self.steps.append(
            {"step": self._step, "stage": self._stage, "loss": float(outputs["loss"]), "changed": changed}
        )


class ProgressLines(logging.Handler):
    """Collects the ``step i/n`` progress lines."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("step "):
            self.lines.append(record.getMessage())


def _model(model_class: type, teacher_weights: Path, **kwargs):
    """The shared test model with the visualizer on: this module checks the result images."""
    return tiny_model(model_class, teacher_weights, **{"visualizer": True, **kwargs})


def _engine(root: Path, **kwargs) -> Engine:
    return Engine(
        default_root_dir=root, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, **kwargs
    )


def _prefixes(model, modules: list[torch.nn.Module]) -> tuple[str, ...]:
    """State-dict prefixes of the torch model's children among ``modules``."""
    return tuple(f"{name}." for name, child in model.named_children() if any(child is m for m in modules))


@dataclass
class Run:
    model: Any
    engine: Engine
    datamodule: Any
    root: Path
    recorder: StepRecorder | None
    test_results: list[dict[str, float]]
    predictions: list[Any]
    progress: list[str] = field(default_factory=list)  # the progress lines logged during fit


@pytest.fixture(scope="module", params=MODEL_CLASSES, ids=lambda cls: cls.__name__)
def run(request, tiny_dataset: Path, teacher_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    model_class = request.param
    lightning.seed_everything(0)
    root = tmp_path_factory.mktemp(f"results_{model_class.__name__}")
    recorder, lines = StepRecorder(), ProgressLines()
    model = _model(model_class, teacher_weights, student_steps=STUDENT_STEPS, segmentation_steps=SEGMENTATION_STEPS)
    datamodule = tiny_datamodule(tiny_dataset)
    engine = _engine(root, callbacks=[recorder])
    level = progress.logger.level
    progress.logger.addHandler(lines)
    progress.logger.setLevel(logging.INFO)
    try:
        engine.fit(model, datamodule=datamodule)
    finally:
        progress.logger.removeHandler(lines)
        progress.logger.setLevel(level)
    test_results = engine.test(model, datamodule=datamodule)
    predictions = engine.predict(model, datamodule=datamodule)
    return Run(model, engine, datamodule, root, recorder, test_results, predictions, lines.lines)


@pytest.fixture(scope="module")
def folder_run(tiny_dataset: Path, teacher_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    lightning.seed_everything(1)
    root = tmp_path_factory.mktemp("results_folder")
    datamodule = Folder(
        name="tiny_folder",
        root=tiny_dataset / "synthetic",
        normal_dir="train/good",
        abnormal_dir="test/defect",
        normal_test_dir="test/good",
        mask_dir="ground_truth/defect",
        val_split_mode="same_as_test",
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )
    model = _model(DeSTSeg, teacher_weights)
    engine = _engine(root)
    engine.fit(model, datamodule=datamodule)
    return Run(
        model,
        engine,
        datamodule,
        root,
        None,
        engine.test(model, datamodule=datamodule),
        engine.predict(model, datamodule=datamodule),
    )


# --- the schedule and what each stage trains --------------------------------------------------------------------
def test_global_step_is_student_plus_segmentation_steps(run: Run) -> None:
    assert run.model.global_step == STUDENT_STEPS + SEGMENTATION_STEPS
    stages = [s["stage"] for s in run.recorder.steps]
    assert stages == [Stage.STUDENT] * STUDENT_STEPS + [Stage.SEGMENTATION] * SEGMENTATION_STEPS
    assert [s["step"] for s in run.recorder.steps] == list(range(STUDENT_STEPS + SEGMENTATION_STEPS))


def test_progress_lines_time_each_stage_separately(run: Run) -> None:
    # 17 steps: fewer than 20, so every step logs a line
    pattern = re.compile(
        r"step (\d+)/17 \((\w+) stage\): loss [\d.]+, ([\d.]+) s/step, about (\d+) s left in this stage"
    )
    parsed = [pattern.fullmatch(line) for line in run.progress]
    assert all(parsed), run.progress
    steps = [(int(m[1]), m[2], float(m[3]), int(m[4])) for m in parsed]
    assert [step for step, *_ in steps] == list(range(1, 18))
    assert [stage for _, stage, *_ in steps] == ["student"] * STUDENT_STEPS + ["segmentation"] * SEGMENTATION_STEPS
    # the time left counts to the end of the current stage: none at the last student step and at the end
    assert steps[STUDENT_STEPS - 1][3] == 0 and steps[-1][3] == 0
    assert steps[0][3] == pytest.approx(steps[0][2] * (STUDENT_STEPS - 1), abs=1)


def test_student_steps_change_only_the_student(run: Run) -> None:
    model = run.model.model
    student = {k for k in model.state_dict() if k.startswith(_prefixes(model, model.student_modules))}
    decoder = {k for k in student if k.startswith("student_decoder.")}
    for record in run.recorder.steps[:STUDENT_STEPS]:
        changed = record["changed"]
        assert changed <= student, f"step {record['step']} changed {sorted(changed - student)}"
        assert decoder <= changed  # every decoder tensor moves (gradient or BN statistics)
        # zero-initialised residual BatchNorms block the gradient of the blocks' bn1 biases in the first step
        assert len(changed) >= 0.9 * len(student)


def test_segmentation_steps_change_only_the_segmentation_modules(run: Run) -> None:
    model = run.model.model
    segmentation = {k for k in model.state_dict() if k.startswith(_prefixes(model, model.segmentation_modules))}
    assert "segmentation_network.head.1.weight" in segmentation
    for record in run.recorder.steps[STUDENT_STEPS:]:
        # all of their parameters and BatchNorm statistics, and nothing of the student or the teacher
        assert record["changed"] == segmentation


def test_teacher_never_changes(run: Run, teacher_weights: Path) -> None:
    state = torch.load(teacher_weights, map_location="cpu", weights_only=True)
    teacher = run.model.model.teacher
    for name, value in teacher.state_dict().items():
        if name in state:
            assert torch.equal(value, state[name]), name
    assert bool(teacher.pretrained)


def test_student_loss_decreases(run: Run) -> None:
    losses = [s["loss"] for s in run.recorder.steps[:STUDENT_STEPS]]
    assert all(math.isfinite(loss) for loss in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses


def test_optimisers_follow_the_reference(run: Run) -> None:
    student_optimizer, segmentation_optimizer = run.engine.trainer.optimizers
    model = run.model.model
    assert isinstance(student_optimizer, torch.optim.SGD) and isinstance(segmentation_optimizer, torch.optim.SGD)
    (student_group,) = student_optimizer.param_groups
    assert (student_group["lr"], student_group["momentum"], student_group["weight_decay"]) == (0.4, 0.9, 1e-4)
    # the very Parameter objects of the model (a deep copy would train nothing)
    student_ids = {id(p) for m in model.student_modules for p in m.parameters()}
    assert {id(p) for p in student_group["params"]} == student_ids
    residual, head = segmentation_optimizer.param_groups
    network = model.segmentation_network
    assert (residual["lr"], residual["momentum"], residual["weight_decay"]) == (0.1, 0.9, 1e-4)
    assert (head["lr"], head["momentum"], head["weight_decay"]) == (0.01, 0.9, 1e-4)
    feeding = [*(model.adaptive_fusion.parameters() if getattr(model, "adaptive_fusion", None) else [])]
    assert {id(p) for p in residual["params"]} == {id(p) for p in [*feeding, *network.residual.parameters()]}
    assert {id(p) for p in head["params"]} == {id(p) for m in (network.aspp, network.head) for p in m.parameters()}
    every_trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert student_ids | {id(p) for g in (residual, head) for p in g["params"]} == every_trainable


# --- evaluation, visualisation, prediction ------------------------------------------------------------------------
def _check_metrics(run: Run) -> None:
    (results,) = run.test_results
    expected = REQUIRED_METRICS | {metric.name for metric in paper_evaluator().test_metrics}
    assert expected <= results.keys()
    for name in REQUIRED_METRICS:
        assert 0.0 <= results[name] <= 1.0, (name, results[name])


def _check_predictions(run: Run) -> None:
    assert sum(len(batch.pred_score) for batch in run.predictions) == 8  # 4 good + 4 defective test images
    for batch in run.predictions:
        size = len(batch.pred_score)
        assert batch.pred_score.shape == (size,)
        assert batch.anomaly_map.shape[-2:] == (TINY_SIZE, TINY_SIZE)
        assert batch.pred_label is not None and batch.pred_mask is not None
        assert torch.isfinite(batch.anomaly_map).all()
        assert batch.raw_anomaly_map.shape == batch.anomaly_map.shape  # kept for the paper's metrics


def _check_images_and_checkpoint(run: Run) -> None:
    images = [p for p in run.root.rglob("*.png") if "images" in p.parts]
    assert len(images) >= 8
    checkpoint = Path(run.engine.best_model_path)
    assert checkpoint.is_file() and run.root in checkpoint.parents
    assert type(run.model).__name__ in checkpoint.parts


def test_test_metrics_predictions_images_and_checkpoint(run: Run) -> None:
    _check_metrics(run)
    _check_predictions(run)
    _check_images_and_checkpoint(run)


def test_the_folder_datamodule_trains_tests_and_predicts(folder_run: Run) -> None:
    _check_metrics(folder_run)
    _check_predictions(folder_run)
    _check_images_and_checkpoint(folder_run)


def test_image_auroc_is_computed_on_the_raw_scores(run: Run) -> None:
    from torchmetrics.classification import BinaryAUROC

    raw = torch.cat([batch.raw_pred_score for batch in run.predictions])
    labels = torch.cat([batch.gt_label for batch in run.predictions])
    (results,) = run.test_results
    assert results["image_AUROC"] == pytest.approx(BinaryAUROC()(raw, labels).item(), abs=1e-6)


SECOND_MAP_METRICS = ["image_AUROC", "pixel_AUROC", "pixel_AUPR", "pixel_AUPRO", "pixel_IAP", "pixel_IAP90"]


def test_one_test_run_reports_both_maps(run: Run) -> None:
    """The DeST map travels in the test and predict batches (raw) and gets the paper's metrics, prefixed DeST_."""
    from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

    (results,) = run.test_results
    assert {f"DeST_{name}" for name in SECOND_MAP_METRICS} <= results.keys()
    assert not {"DeST_image_F1Score", "Seg_image_AUROC"} & results.keys()
    labels = torch.cat([batch.gt_label for batch in run.predictions])
    dest_scores = torch.cat([batch.dest_pred_score for batch in run.predictions])
    assert results["DeST_image_AUROC"] == pytest.approx(BinaryAUROC()(dest_scores, labels).item(), abs=1e-6)
    dest_maps = torch.cat([batch.dest_anomaly_map for batch in run.predictions])
    masks = torch.cat([batch.gt_mask for batch in run.predictions]).int()
    pixel_ap = BinaryAveragePrecision()(dest_maps.flatten(), masks.flatten()).item()
    assert results["DeST_pixel_AUPR"] == pytest.approx(pixel_ap, abs=1e-5)
    batch = run.predictions[0]
    model = run.model.eval()
    with torch.no_grad():
        dest = model.model.predict_maps(batch.image, ("dest",))["dest"]
        segmentation = model.model(batch.image)
    assert batch.dest_anomaly_map.shape == batch.anomaly_map.shape == (len(batch.image), TINY_SIZE, TINY_SIZE)
    torch.testing.assert_close(batch.dest_anomaly_map, dest.anomaly_map[:, 0])  # raw: never normalised
    torch.testing.assert_close(batch.dest_pred_score, dest.pred_score)
    torch.testing.assert_close(batch.raw_anomaly_map, segmentation.anomaly_map[:, 0])  # the output map


def test_the_second_map_can_be_switched_off(run: Run, tmp_path: Path) -> None:
    """``second_map=False``: no DeST fields, no DeST_ metrics, the output map's metrics unchanged."""
    model_class = type(run.model)
    model = model_class.load_from_checkpoint(run.engine.best_model_path, second_map=False, visualizer=False)
    (results,) = _engine(tmp_path).test(model, datamodule=run.datamodule)
    assert not any(name.startswith(("DeST_", "Seg_")) for name in results)
    assert results["image_AUROC"] == pytest.approx(run.test_results[0]["image_AUROC"], abs=1e-6)
    assert results["pixel_AUPRO"] == pytest.approx(run.test_results[0]["pixel_AUPRO"], abs=1e-6)


def test_checkpoint_round_trip(run: Run) -> None:
    loaded = type(run.model).load_from_checkpoint(run.engine.best_model_path, weights_only=True)  # as anomalib 2.7
    assert loaded.hparams.student_steps == STUDENT_STEPS
    assert dict(loaded.hparams) == dict(run.model.hparams)
    assert bool(loaded.model.teacher.pretrained)
    images = next(iter(run.datamodule.test_dataloader())).image
    trained = run.model.eval()
    loaded.eval()
    with torch.no_grad():
        expected, actual = trained.model(images), loaded.model(images)
        expected_full, actual_full = trained(images), loaded(images)  # pre-processing, model, post-processing
    assert torch.equal(expected.pred_score, actual.pred_score)
    assert torch.equal(expected.anomaly_map, actual.anomaly_map)
    assert torch.equal(expected_full.pred_score, actual_full.pred_score)
    assert torch.equal(expected_full.anomaly_map, actual_full.anomaly_map)


def test_test_and_predict_refuse_a_checkpoint_without_teacher_weights(
    run: Run, teacher_weights: Path, tmp_path: Path
) -> None:
    """A checkpoint whose teacher never got its weights is refused, never evaluated with a random teacher."""
    checkpoint = torch.load(run.engine.best_model_path, map_location="cpu", weights_only=False)
    checkpoint["state_dict"]["model.teacher.pretrained"] = torch.tensor(False)
    path = tmp_path / "random_teacher.ckpt"
    torch.save(checkpoint, path)
    model_class = type(run.model)
    with pytest.raises(RuntimeError, match="random teacher"):
        _engine(tmp_path).test(_model(model_class, teacher_weights), datamodule=run.datamodule, ckpt_path=path)
    with pytest.raises(RuntimeError, match="random teacher"):
        _engine(tmp_path).predict(_model(model_class, teacher_weights), datamodule=run.datamodule, ckpt_path=path)


# --- set-ups that train, and set-ups that are refused -------------------------------------------------------------
@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_a_training_set_smaller_than_the_batch_trains_with_a_warning(
    model_class: type, teacher_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """anomalib's 5-image test datasets with the default batch of 32: every step trains on all 5 images."""
    root = tmp_path / "data"
    make_synthetic_dataset(root, image_size=TINY_SIZE, num_train=5, num_test_good=2, num_test_defect=2)
    model = _model(model_class, teacher_weights, student_steps=2, segmentation_steps=1, visualizer=False)
    recorder = StepRecorder()
    with caplog.at_level(logging.WARNING):
        quiet_cpu_engine(tmp_path / "results", callbacks=(recorder,)).fit(
            model, datamodule=tiny_datamodule(root, train_batch_size=32)
        )
    assert model.global_step == 3 and len(recorder.steps) == 3
    assert "has 5 images, fewer than train_batch_size=32: every step trains on a batch of all 5" in caplog.text


def test_batches_of_one_image_are_refused(tiny_dataset: Path, teacher_weights: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_batch_size is 1"):
        _engine(tmp_path).fit(
            _model(DeSTSeg, teacher_weights), datamodule=tiny_datamodule(tiny_dataset, train_batch_size=1)
        )
    root = tmp_path / "one_image"
    make_synthetic_dataset(root, image_size=TINY_SIZE, num_train=1, num_test_good=1, num_test_defect=1)
    with pytest.raises(ValueError, match="has 1 images: batches of at least 2 are needed"):
        _engine(tmp_path).fit(_model(DeSTSeg, teacher_weights), datamodule=tiny_datamodule(root))


def test_missing_texture_dir_is_reported_at_fit_start(
    tiny_dataset: Path, teacher_weights: Path, tmp_path: Path
) -> None:
    model = _model(DeSTSeg, teacher_weights, texture_dir=str(tmp_path / "no_dtd_here"))  # accepted at construction
    with pytest.raises(FileNotFoundError, match="no_dtd_here"):
        _engine(tmp_path).fit(model, datamodule=tiny_datamodule(tiny_dataset))
    assert model.global_step == 0


def test_normalize_in_the_pre_processor_is_refused(tiny_dataset: Path, teacher_weights: Path, tmp_path: Path) -> None:
    transform = Compose(
        [Resize((TINY_SIZE, TINY_SIZE)), Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])]
    )
    model = _model(DeSTSeg, teacher_weights, pre_processor=PreProcessor(transform=transform))
    with pytest.raises(ValueError, match="Normalize"):
        _engine(tmp_path).fit(model, datamodule=tiny_datamodule(tiny_dataset))


# --- images larger than the model's input ---------------------------------------------------------------------------
LARGE_SIZE = (110, 150)  # (H, W): not square, larger than 64x64 along both sides, not a multiple of it


class TrainingImages(Callback):
    """The image paths and images of every training batch as the model receives them."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((list(batch.image_path), batch.image.detach().clone()))


@pytest.fixture(scope="module")
def large_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated MVTec-layout dataset whose images and masks are 150x110 (W x H)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("large_dataset")
    make_synthetic_dataset(root, image_size=128, num_train=8, num_test_good=2, num_test_defect=2, seed=3)
    height, width = LARGE_SIZE
    for path in (root / "synthetic").rglob("*.png"):
        image = Image.open(path)
        nearest = "ground_truth" in path.parts  # masks stay 0/255
        image.resize((width, height), Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC).save(path)
    return root


def _antialiased(images: torch.Tensor) -> torch.Tensor:
    """The reference's resize of [N, 3, H, W] images to the model's input, written out by hand."""
    return torch.nn.functional.interpolate(
        images, size=(TINY_SIZE, TINY_SIZE), mode="bilinear", align_corners=False, antialias=True
    )


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_larger_images_are_resized_with_antialiasing_in_fit_test_and_predict(
    model_class: type, large_dataset: Path, teacher_weights: Path, tmp_path: Path
) -> None:
    """150x110 files and a 64x64 pre-processor: every stage sees the reference's antialiased resize.

    anomalib's datamodule appends the pre-processor's resize to each dataset's transforms, so training, test and
    predict batches, their masks and the maps (anomalib 2.7 keeps the maps at the model's input size) are 64x64, and
    every value equals a hand-written antialiased resize followed by the model's forward and post-processing.
    """
    from anomalib.data.utils import read_image, read_mask

    from anomalib_destseg.data.resize import resize_masks

    lightning.seed_everything(0)
    model = tiny_model(model_class, teacher_weights)
    datamodule = tiny_datamodule(large_dataset)
    seen = TrainingImages()
    engine = quiet_cpu_engine(tmp_path, callbacks=(seen,))
    engine.fit(model, datamodule=datamodule)
    (results,) = engine.test(model, datamodule=datamodule)
    predictions = engine.predict(model, datamodule=datamodule)

    assert len(seen.batches) == 4  # 2 + 2 steps of 4 images
    for paths, images in seen.batches:
        originals = torch.stack([read_image(path, as_tensor=True) for path in paths])
        assert originals.shape[-2:] == LARGE_SIZE
        assert images.shape[-2:] == (TINY_SIZE, TINY_SIZE)
        assert (images - _antialiased(originals)).abs().max() < 1e-5
    assert 0 <= results["pixel_AUROC"] <= 1  # the test masks were resized alike, or the pixel metrics would fail

    model.eval()
    for batch in predictions:
        originals = torch.stack([read_image(path, as_tensor=True) for path in batch.image_path])
        assert originals.shape[-2:] == LARGE_SIZE
        assert batch.anomaly_map.shape[-2:] == (TINY_SIZE, TINY_SIZE)
        resized = _antialiased(originals)
        assert (batch.image - resized).abs().max() < 1e-5
        with torch.no_grad():
            expected = model.post_processor(model.model(resized))
            plain = model.post_processor(
                model.model(torch.nn.functional.interpolate(originals, size=(TINY_SIZE, TINY_SIZE), mode="bilinear"))
            )
        assert (batch.anomaly_map.reshape(expected.anomaly_map.shape) - expected.anomaly_map).abs().max() < 1e-5
        assert (batch.pred_score - expected.pred_score).abs().max() < 1e-5
        assert (plain.anomaly_map - expected.anomaly_map).abs().max() > 1e-3  # without antialiasing: other maps
        for path, label, mask in zip(batch.image_path, batch.gt_label, batch.gt_mask, strict=True):
            if label:
                mask_path = (
                    Path(path).parents[2] / "ground_truth" / Path(path).parent.name / f"{Path(path).stem}_mask.png"
                )
                original = read_mask(mask_path, as_tensor=True)
                assert original.shape[-2:] == LARGE_SIZE
                assert torch.equal(mask.bool(), resize_masks(original.bool()[None], (TINY_SIZE, TINY_SIZE))[0])
