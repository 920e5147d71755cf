"""Resuming an interrupted training run (``Engine.fit(..., ckpt_path=...)`` and ``anomalib fit --ckpt_path``).

The runs have 3 student steps and 3 segmentation steps on 12 training images in batches of 4: three batches per
epoch, so step 3 ends both an epoch and stage 1, and steps 1 and 4 are mid-epoch.

How close a resumed run comes to the uninterrupted one (CPU, ``num_workers=0``), and why:

- Interrupted at the end of an epoch: the final weights are exactly equal (every tensor, bit for bit). The checkpoint
  holds the weights, both SGD optimisers' states (momentum), Lightning's loop counters (``global_step`` counts
  optimiser steps, so the stage and the end of the run follow from it), the synthetic-anomaly random stream and
  torch's global CPU generator, which draws the next epoch's shuffling seed.
- Interrupted mid-epoch: Lightning cannot resume a plain ``DataLoader`` half way; it starts that epoch's loader again
  (a new shuffle) for the remaining number of batches. Everything else still continues exactly, which the tests show
  with a training set of identical images, where the data order cannot matter: the final weights are again exactly
  equal. With different images the rest of that epoch holds other images (and the later shuffles move on from a
  different generator state), so such a run differs from the uninterrupted one as much as two data orders do.

Exact equality after more than one resumed step also shows that the momentum buffers were restored: without them
the next updates would differ. The resumed runs get a ``teacher_weights`` path that does not exist: the teacher's
weights must come from the checkpoint. DeSTSeg is resumed in every case; PFADSeg (same training code, other
segmentation network) at the end of stage 1, with the default evaluator validating at each epoch's end.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch
from anomalib.engine import Engine
from helpers import quiet_cpu_engine, tiny_datamodule, tiny_model
from lightning.pytorch import Callback

from anomalib_destseg import DeSTSeg, PFADSeg
from anomalib_destseg.components import took_a_step

SIZE = 64
STUDENT_STEPS, SEGMENTATION_STEPS = 3, 3
MISSING_TEACHER = "/nonexistent/teacher_weights.pth"

pytestmark = pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended")


class SimulatedCrashError(RuntimeError):
    """Raised by :class:`Checkpointer` to simulate a crash."""


class Checkpointer(Callback):
    """Save ``step<k>.ckpt`` right after optimiser step ``k`` for each ``k`` in ``at``; crash after saving one at
    ``crash_at``."""

    def __init__(self, folder: Path, at: set[int] = frozenset(), crash_at: int | None = None) -> None:
        self.folder, self.at, self.crash_at = folder, set(at), crash_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if took_a_step(outputs) and (step in self.at or step == self.crash_at):
            trainer.save_checkpoint(self.folder / f"step{step}.ckpt")
            if step == self.crash_at:
                raise SimulatedCrashError(step)


def _fingerprint(modules: list[torch.nn.Module]) -> torch.Tensor:
    """Norms of every parameter: any SGD update changes some of them."""
    return torch.stack([p.detach().double().norm() for module in modules for p in module.parameters()])


class StageRecorder(Callback):
    """For every optimiser step: ``(global_step after it, student changed, segmentation network changed)``."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, bool, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._before = (
            _fingerprint(pl_module.model.student_modules),
            _fingerprint(pl_module.model.segmentation_modules),
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not took_a_step(outputs):
            return
        student, segmentation = self._before
        self.steps.append(
            (
                trainer.global_step,
                not torch.equal(student, _fingerprint(pl_module.model.student_modules)),
                not torch.equal(segmentation, _fingerprint(pl_module.model.segmentation_modules)),
            )
        )


def _expected_steps(first: int) -> list[tuple[int, bool, bool]]:
    """Steps ``first..6`` (``global_step`` after each): stage 1 changes only the student, stage 2 only the
    segmentation network."""
    last = STUDENT_STEPS + SEGMENTATION_STEPS
    return [(step, step <= STUDENT_STEPS, step > STUDENT_STEPS) for step in range(first, last + 1)]


def _fit(
    dataset: Path,
    root: Path,
    teacher: str | Path,
    ckpt_path: Path | None = None,
    callbacks: tuple = (),
    precision: str = "32",
    model_class: type = DeSTSeg,
    evaluator: bool = False,
) -> tuple[DeSTSeg | PFADSeg, Engine]:
    """Seed 0, then fit the model (3 + 3 steps) on ``dataset``; the same model arguments for every run.

    Without the evaluator unless ``evaluator`` is true (then the validation at each epoch's end computes the paper's
    metrics, which must not disturb the resumed run either).
    """
    lightning.seed_everything(0)
    datamodule = tiny_datamodule(dataset)
    model = tiny_model(
        model_class,
        teacher,
        size=SIZE,
        student_steps=STUDENT_STEPS,
        segmentation_steps=SEGMENTATION_STEPS,
        **({} if evaluator else {"evaluator": False}),
    )
    engine = quiet_cpu_engine(root, callbacks, precision=precision)
    engine.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return model, engine


def _state(model: DeSTSeg) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.model.state_dict().items()}


def _assert_identical(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    different = [key for key in expected if not torch.equal(actual[key], expected[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


@pytest.fixture(scope="module")
def identical_dataset(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset with all 12 training images replaced by copies of the first one."""
    root = tmp_path_factory.mktemp("identical_images")
    shutil.copytree(tiny_dataset / "synthetic", root / "synthetic")
    train = sorted((root / "synthetic" / "train" / "good").glob("*.png"))
    for path in train[1:]:
        shutil.copyfile(train[0], path)
    return root


@pytest.fixture(scope="module")
def identical_reference(
    identical_dataset: Path, teacher_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, torch.Tensor], Path]:
    """The uninterrupted run on identical images (final weights), with a checkpoint saved after step 1."""
    root = tmp_path_factory.mktemp("identical_reference")
    model, engine = _fit(identical_dataset, root, teacher_weights, callbacks=(Checkpointer(root, at={1}),))
    assert engine.trainer.global_step == STUDENT_STEPS + SEGMENTATION_STEPS
    return _state(model), root / "step1.ckpt"


@pytest.fixture(scope="module")
def crashed_in_stage_2(
    identical_dataset: Path, teacher_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A run on identical images that crashes right after saving a checkpoint at step 4 (stage 2, mid-epoch)."""
    root = tmp_path_factory.mktemp("crashed")
    with pytest.raises(SimulatedCrashError):
        _fit(identical_dataset, root, teacher_weights, callbacks=(Checkpointer(root, crash_at=4),))
    return root / "step4.ckpt"


@pytest.mark.parametrize(
    ("model_class", "precision", "evaluator"),
    [(DeSTSeg, "32", False), (DeSTSeg, "bf16-mixed", False), (PFADSeg, "32", True)],
    ids=["DeSTSeg-32", "DeSTSeg-bf16-mixed", "PFADSeg-32-evaluator"],
)
def test_resume_at_the_end_of_an_epoch_and_of_stage_1_equals_the_uninterrupted_run(
    tiny_dataset: Path, teacher_weights: Path, tmp_path: Path, model_class: type, precision: str, evaluator: bool
) -> None:
    """Different images, interrupted after step 3 (end of epoch 1 and of stage 1): bit-identical final weights."""
    checkpointer = Checkpointer(tmp_path, at={3})
    options = {"precision": precision, "model_class": model_class, "evaluator": evaluator}
    reference, _ = _fit(tiny_dataset, tmp_path / "full", teacher_weights, callbacks=(checkpointer,), **options)
    recorder = StageRecorder()
    resumed, engine = _fit(
        tiny_dataset,
        tmp_path / "resumed",
        MISSING_TEACHER,
        ckpt_path=tmp_path / "step3.ckpt",
        callbacks=(recorder,),
        **options,
    )
    assert type(resumed) is model_class
    assert engine.trainer.global_step == STUDENT_STEPS + SEGMENTATION_STEPS
    assert recorder.steps == _expected_steps(4)  # straight into stage 2, which never touches the student
    _assert_identical(_state(resumed), _state(reference))


def test_resume_mid_epoch_in_stage_1_continues_stage_1_and_equals_the_uninterrupted_run(
    identical_dataset: Path, identical_reference: tuple[dict[str, torch.Tensor], Path], tmp_path: Path
) -> None:
    """Interrupted after step 1: two more student steps, then stage 2; identical images give identical weights."""
    reference, checkpoint = identical_reference
    recorder = StageRecorder()
    _, engine = _fit(identical_dataset, tmp_path, MISSING_TEACHER, ckpt_path=checkpoint, callbacks=(recorder,))
    assert engine.trainer.global_step == STUDENT_STEPS + SEGMENTATION_STEPS
    assert recorder.steps == _expected_steps(2)
    _assert_identical(_state(engine.model), reference)


def test_resume_after_a_crash_in_stage_2_never_trains_the_student_again(
    identical_dataset: Path,
    identical_reference: tuple[dict[str, torch.Tensor], Path],
    crashed_in_stage_2: Path,
    tmp_path: Path,
) -> None:
    """Crashed after step 4 (mid-epoch): steps 5 and 6 train the segmentation network only, ending at step 6."""
    reference, _ = identical_reference
    recorder = StageRecorder()
    model, engine = _fit(
        identical_dataset, tmp_path, MISSING_TEACHER, ckpt_path=crashed_in_stage_2, callbacks=(recorder,)
    )
    assert engine.trainer.global_step == STUDENT_STEPS + SEGMENTATION_STEPS
    assert recorder.steps == _expected_steps(5)
    saved = torch.load(crashed_in_stage_2, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4
    student = {f"model.{k}" for k, _ in model.model.named_parameters() if k.startswith("student")}
    student |= {f"model.{k}" for k, _ in model.model.named_buffers() if k.startswith("student")}
    assert student, "no student tensors found"
    final = model.state_dict()
    assert all(torch.equal(final[key], saved["state_dict"][key]) for key in student)  # BatchNorm statistics too
    _assert_identical(_state(model), reference)


@pytest.mark.slow
def test_anomalib_fit_cli_resumes_with_ckpt_path(
    identical_dataset: Path,
    identical_reference: tuple[dict[str, torch.Tensor], Path],
    crashed_in_stage_2: Path,
    tmp_path: Path,
) -> None:
    """``anomalib fit ... --ckpt_path`` (another process, its own seeding) ends with the uninterrupted weights."""
    reference, _ = identical_reference
    command = [
        *(str(Path(sys.executable).parent / "anomalib"), "fit"),
        *("--model", "anomalib_destseg.DeSTSeg"),
        *("--model.student_steps", str(STUDENT_STEPS), "--model.segmentation_steps", str(SEGMENTATION_STEPS)),
        *("--model.teacher_weights", MISSING_TEACHER, "--model.visualizer", "false", "--model.evaluator", "false"),
        *("--model.pre_processor", "anomalib.pre_processing.PreProcessor"),
        *("--model.pre_processor.transform", "torchvision.transforms.v2.Resize"),
        *("--model.pre_processor.transform.size", f"[{SIZE}, {SIZE}]"),
        *("--data", "anomalib.data.MVTecAD", "--data.root", str(identical_dataset), "--data.category", "synthetic"),
        *("--data.train_batch_size", "4", "--data.eval_batch_size", "4", "--data.num_workers", "0"),
        *("--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"),
        *("--default_root_dir", str(tmp_path), "--ckpt_path", str(crashed_in_stage_2)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (final,) = tmp_path.rglob("model.ckpt")
    checkpoint = torch.load(final, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == STUDENT_STEPS + SEGMENTATION_STEPS
    state = {key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items()}
    _assert_identical({key: state[key] for key in reference}, reference)
