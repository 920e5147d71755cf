"""DeSTSeg as an anomalib Lightning module, run end to end with anomalib's Engine on the tiny dataset.

One module-scoped run (MVTecAD datamodule) records every optimiser step and serves most tests: which tensors each
stage changes, the student loss curve, the optimisers, metrics, visualisations, predictions and the checkpoint.
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
from anomalib.data import Folder, MVTecAD
from anomalib.engine import Engine
from anomalib.pre_processing import PreProcessor
from lightning.pytorch import Callback
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_destseg import DeSTSeg
from anomalib_destseg.components import two_stage_module
from anomalib_destseg.metrics import paper_evaluator

SIZE = 64
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
        self._step, self._stage = trainer.global_step, pl_module.stage_at(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if outputs is None:  # a skipped (incomplete) batch
            return
        after = pl_module.model.state_dict()
        changed = {k for k, v in after.items() if not torch.equal(v, self._before[k])}
        self.steps.append(
            {"step": self._step, "stage": self._stage, "loss": float(outputs["loss"]), "changed": changed}
        )


def _datamodule(tiny_dataset: Path, **kwargs) -> MVTecAD:
    args = {"train_batch_size": 4, "eval_batch_size": 4, "num_workers": 0, **kwargs}
    return MVTecAD(root=tiny_dataset, category="synthetic", **args)


def _model(teacher_weights: Path, **kwargs) -> DeSTSeg:
    args = {
        "student_steps": 2,
        "segmentation_steps": 2,
        "teacher_weights": str(teacher_weights),
        "pre_processor": DeSTSeg.configure_pre_processor((SIZE, SIZE)),
        **kwargs,
    }
    return DeSTSeg(**args)


def _engine(root: Path, **kwargs) -> Engine:
    return Engine(
        default_root_dir=root, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, **kwargs
    )


@dataclass
class Run:
    model: DeSTSeg
    engine: Engine
    datamodule: Any
    root: Path
    recorder: StepRecorder | None
    test_results: list[dict[str, float]]
    predictions: list[Any]
    progress: list[str] = field(default_factory=list)  # the progress lines logged during fit


@pytest.fixture(scope="module")
def mvtec_run(tiny_dataset: Path, teacher_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    lightning.seed_everything(0)
    root = tmp_path_factory.mktemp("results_mvtec")
    recorder = StepRecorder()
    model = _model(teacher_weights, student_steps=STUDENT_STEPS, segmentation_steps=SEGMENTATION_STEPS)
    datamodule = _datamodule(tiny_dataset)
    engine = _engine(root, callbacks=[recorder])
    progress = _ProgressLines()
    module_logger = two_stage_module.logger
    level = module_logger.level
    module_logger.addHandler(progress)
    module_logger.setLevel(logging.INFO)
    try:
        engine.fit(model, datamodule=datamodule)
    finally:
        module_logger.removeHandler(progress)
        module_logger.setLevel(level)
    test_results = engine.test(model, datamodule=datamodule)
    predictions = engine.predict(model, datamodule=datamodule)
    return Run(model, engine, datamodule, root, recorder, test_results, predictions, progress.lines)


class _ProgressLines(logging.Handler):
    """Collects the module's ``step i/n`` progress lines."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("step "):
            self.lines.append(record.getMessage())


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
    model = _model(teacher_weights)
    engine = _engine(root)
    engine.fit(model, datamodule=datamodule)
    test_results = engine.test(model, datamodule=datamodule)
    predictions = engine.predict(model, datamodule=datamodule)
    return Run(model, engine, datamodule, root, None, test_results, predictions)


# --- the schedule and what each stage trains --------------------------------------------------------------------
def test_global_step_is_student_plus_segmentation_steps(mvtec_run: Run) -> None:
    assert mvtec_run.model.global_step == STUDENT_STEPS + SEGMENTATION_STEPS
    stages = [s["stage"] for s in mvtec_run.recorder.steps]
    assert stages == ["student"] * STUDENT_STEPS + ["segmentation"] * SEGMENTATION_STEPS
    assert [s["step"] for s in mvtec_run.recorder.steps] == list(range(STUDENT_STEPS + SEGMENTATION_STEPS))


def test_progress_lines_time_each_stage_separately(mvtec_run: Run) -> None:
    # 17 steps: fewer than 20, so every step logs a line
    pattern = re.compile(
        r"step (\d+)/17 \((\w+) stage\): loss [\d.]+, ([\d.]+) s/step, about (\d+) s left in this stage"
    )
    parsed = [pattern.fullmatch(line) for line in mvtec_run.progress]
    assert all(parsed), mvtec_run.progress
    steps = [(int(m[1]), m[2], float(m[3]), int(m[4])) for m in parsed]
    assert [step for step, *_ in steps] == list(range(1, 18))
    assert [stage for _, stage, *_ in steps] == ["student"] * STUDENT_STEPS + ["segmentation"] * SEGMENTATION_STEPS
    # the time left counts to the end of the current stage: none at the last student step and at the end
    assert steps[STUDENT_STEPS - 1][3] == 0 and steps[-1][3] == 0
    per_step = steps[0][2]
    assert steps[0][3] == pytest.approx(per_step * (STUDENT_STEPS - 1), abs=1)


def test_student_step_changes_only_the_student(mvtec_run: Run) -> None:
    keys = mvtec_run.model.model.state_dict().keys()
    encoder = {k for k in keys if k.startswith("student_encoder.")}
    decoder = {k for k in keys if k.startswith("student_decoder.")}
    for record in mvtec_run.recorder.steps[:STUDENT_STEPS]:
        changed = record["changed"]
        assert changed <= encoder | decoder, f"step {record['step']} changed {sorted(changed - encoder - decoder)}"
        assert decoder <= changed  # every decoder tensor moves (gradient or BN statistics)
        # zero-initialised residual BatchNorms block the gradient of the blocks' bn1 biases in the first step
        assert len(changed & encoder) >= 0.9 * len(encoder)


def test_segmentation_step_changes_only_the_segmentation_network(mvtec_run: Run) -> None:
    segmentation = {k for k in mvtec_run.model.model.state_dict() if k.startswith("segmentation_network.")}
    for record in mvtec_run.recorder.steps[STUDENT_STEPS:]:
        # all of its parameters and BatchNorm statistics, and nothing of the student or the teacher
        assert record["changed"] == segmentation


def test_teacher_never_changes(mvtec_run: Run, teacher_weights: Path) -> None:
    state = torch.load(teacher_weights, map_location="cpu", weights_only=True)
    teacher = mvtec_run.model.model.teacher
    for name, value in teacher.state_dict().items():
        if name in state:
            assert torch.equal(value, state[name]), name
    assert bool(teacher.pretrained)
    assert not teacher.training


def test_student_loss_decreases(mvtec_run: Run) -> None:
    losses = [s["loss"] for s in mvtec_run.recorder.steps[:STUDENT_STEPS]]
    assert all(math.isfinite(loss) for loss in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses


def test_optimisers_follow_the_reference(mvtec_run: Run) -> None:
    student_optimizer, segmentation_optimizer = mvtec_run.engine.trainer.optimizers
    model = mvtec_run.model.model
    assert isinstance(student_optimizer, torch.optim.SGD) and isinstance(segmentation_optimizer, torch.optim.SGD)
    (student_group,) = student_optimizer.param_groups
    assert (student_group["lr"], student_group["momentum"], student_group["weight_decay"]) == (0.4, 0.9, 1e-4)
    # the very Parameter objects of the model (a deep copy would train nothing)
    student_ids = {id(p) for m in (model.student_encoder, model.student_decoder) for p in m.parameters()}
    assert {id(p) for p in student_group["params"]} == student_ids
    residual, head = segmentation_optimizer.param_groups
    network = model.segmentation_network
    assert (residual["lr"], residual["momentum"], residual["weight_decay"]) == (0.1, 0.9, 1e-4)
    assert (head["lr"], head["momentum"], head["weight_decay"]) == (0.01, 0.9, 1e-4)
    assert {id(p) for p in residual["params"]} == {id(p) for p in network.residual.parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for m in (network.aspp, network.head) for p in m.parameters()}
    every_trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert student_ids | {id(p) for p in network.parameters()} == every_trainable


def test_configure_optimizers_uses_the_hyperparameters(teacher_weights: Path) -> None:
    model = _model(teacher_weights, student_lr=0.2, residual_lr=0.05, head_lr=0.005, momentum=0.5, weight_decay=0.0)
    student_optimizer, segmentation_optimizer = model.configure_optimizers()
    assert student_optimizer.param_groups[0]["lr"] == 0.2
    assert [g["lr"] for g in segmentation_optimizer.param_groups] == [0.05, 0.005]
    groups = [*student_optimizer.param_groups, *segmentation_optimizer.param_groups]
    assert all(g["momentum"] == 0.5 and g["weight_decay"] == 0.0 for g in groups)


# --- evaluation, visualisation, prediction ------------------------------------------------------------------------
@pytest.mark.parametrize("run_name", ["mvtec_run", "folder_run"])
def test_test_metrics(run_name: str, request: pytest.FixtureRequest) -> None:
    run: Run = request.getfixturevalue(run_name)
    (results,) = run.test_results
    expected = REQUIRED_METRICS | {metric.name for metric in paper_evaluator().test_metrics}
    assert expected <= results.keys()
    for name in REQUIRED_METRICS:
        assert 0.0 <= results[name] <= 1.0, (name, results[name])


@pytest.mark.parametrize("run_name", ["mvtec_run", "folder_run"])
def test_predictions(run_name: str, request: pytest.FixtureRequest) -> None:
    run: Run = request.getfixturevalue(run_name)
    batches = run.predictions
    assert sum(len(batch.pred_score) for batch in batches) == 8  # 4 good + 4 defective test images
    for batch in batches:
        size = len(batch.pred_score)
        assert batch.pred_score.shape == (size,)
        assert batch.anomaly_map.shape[-2:] == (SIZE, SIZE)
        assert batch.anomaly_map.reshape(size, -1).shape[1] == SIZE * SIZE
        assert batch.pred_label is not None and batch.pred_mask is not None
        assert torch.isfinite(batch.anomaly_map).all()


@pytest.mark.parametrize("run_name", ["mvtec_run", "folder_run"])
def test_visualizer_writes_images_and_checkpoint_is_written(run_name: str, request: pytest.FixtureRequest) -> None:
    run: Run = request.getfixturevalue(run_name)
    images = [p for p in run.root.rglob("*.png") if "images" in p.parts]
    assert len(images) >= 8
    checkpoint = Path(run.engine.best_model_path)
    assert checkpoint.is_file() and run.root in checkpoint.parents
    assert "DeSTSeg" in checkpoint.parts


def test_checkpoint_round_trip(mvtec_run: Run) -> None:
    path = mvtec_run.engine.best_model_path
    loaded = DeSTSeg.load_from_checkpoint(path, weights_only=True)  # what anomalib 2.7 does
    assert loaded.hparams.student_steps == STUDENT_STEPS
    assert bool(loaded.model.teacher.pretrained)
    images = next(iter(mvtec_run.datamodule.test_dataloader())).image
    trained = mvtec_run.model.eval()
    loaded.eval()
    with torch.no_grad():
        expected, actual = trained.model(images), loaded.model(images)
        expected_full, actual_full = trained(images), loaded(images)  # pre-processing, model, post-processing
    assert torch.equal(expected.pred_score, actual.pred_score)
    assert torch.equal(expected.anomaly_map, actual.anomaly_map)
    assert torch.equal(expected_full.pred_score, actual_full.pred_score)
    assert torch.equal(expected_full.anomaly_map, actual_full.anomaly_map)


def test_test_and_predict_refuse_a_checkpoint_without_teacher_weights(
    mvtec_run: Run, teacher_weights: Path, tmp_path: Path
) -> None:
    """A checkpoint whose teacher never got its weights is refused, never evaluated with a random teacher."""
    checkpoint = torch.load(mvtec_run.engine.best_model_path, map_location="cpu", weights_only=False)
    checkpoint["state_dict"]["model.teacher.pretrained"] = torch.tensor(False)
    path = tmp_path / "random_teacher.ckpt"
    torch.save(checkpoint, path)
    engine = _engine(tmp_path)
    with pytest.raises(RuntimeError, match="random teacher"):
        engine.test(_model(teacher_weights), datamodule=mvtec_run.datamodule, ckpt_path=path)
    with pytest.raises(RuntimeError, match="random teacher"):
        engine.predict(_model(teacher_weights), datamodule=mvtec_run.datamodule, ckpt_path=path)


def test_hooks_refuse_a_teacher_that_was_never_loaded(teacher_weights: Path) -> None:
    model = _model(teacher_weights)
    for hook in (model.on_test_start, model.on_predict_start, model.on_validation_start, model.on_train_start):
        with pytest.raises(RuntimeError, match="random teacher"):
            hook()


def test_setup_loads_the_teacher_weights(teacher_weights: Path) -> None:
    model = _model(teacher_weights)
    assert not bool(model.model.teacher.pretrained)
    model.setup("test")
    assert bool(model.model.teacher.pretrained)
    state = torch.load(teacher_weights, map_location="cpu", weights_only=True)
    assert torch.equal(model.model.teacher.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


# --- bad set-ups ---------------------------------------------------------------------------------------------------
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
        ({"top_k": 0}, "top_k"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeSTSeg(**kwargs)


@pytest.mark.parametrize("size", [(250, 256), (256, 100), (0, 64)])
def test_pre_processor_size_must_be_a_multiple_of_32(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        DeSTSeg.configure_pre_processor(size)


def test_default_pre_processor_resizes_to_256_without_normalising() -> None:
    transforms = DeSTSeg.configure_pre_processor().transform.transforms
    assert [type(t) for t in transforms] == [Resize]
    assert list(transforms[0].size) == [256, 256]


def test_trainer_arguments_follow_the_steps() -> None:
    arguments = DeSTSeg(student_steps=3, segmentation_steps=4).trainer_arguments
    assert arguments["max_steps"] == 7
    assert arguments["val_check_interval"] == 7 and arguments["num_sanity_val_steps"] == 0


def test_train_batch_size_one_is_refused(tiny_dataset: Path, teacher_weights: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_batch_size is 1"):
        _engine(tmp_path).fit(_model(teacher_weights), datamodule=_datamodule(tiny_dataset, train_batch_size=1))


def test_missing_texture_dir_is_reported_at_fit_start(
    tiny_dataset: Path, teacher_weights: Path, tmp_path: Path
) -> None:
    model = _model(teacher_weights, texture_dir=str(tmp_path / "no_dtd_here"))  # accepted at construction
    with pytest.raises(FileNotFoundError, match="no_dtd_here"):
        _engine(tmp_path).fit(model, datamodule=_datamodule(tiny_dataset))
    assert model.global_step == 0


def test_normalize_in_the_pre_processor_is_refused(tiny_dataset: Path, teacher_weights: Path, tmp_path: Path) -> None:
    transform = Compose([Resize((SIZE, SIZE)), Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    model = _model(teacher_weights, pre_processor=PreProcessor(transform=transform))
    with pytest.raises(ValueError, match="Normalize"):
        _engine(tmp_path).fit(model, datamodule=_datamodule(tiny_dataset))
