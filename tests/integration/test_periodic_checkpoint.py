"""Resumable checkpoints during training (``resume.ckpt``): when they are written, what survives what.

The runs train DeSTSeg for 5 + 5 steps on 10 images in batches of 4: each epoch has two optimiser steps and one
skipped incomplete batch of two images, so epoch ends (after steps 2, 4, 6, 8) and the end of stage 1 (step 5,
mid-epoch) fall apart. Heavier faults (SIGKILL at random steps and during a write, a disk that fills up, an image
that becomes unreadable) run in ``benchmarks/fault_injection.py``; its table is in docs/training.md.
"""

import errno
import logging
import os
import re
import shutil
import signal
from pathlib import Path

import lightning
import pytest
import torch
from anomalib.data import MVTecAD
from helpers import TINY_SIZE, crash_before, quiet_cpu_engine, tiny_model
from lightning.pytorch import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import UnidentifiedImageError

from anomalib_destseg import DeSTSeg
from anomalib_destseg.components import took_a_step
from anomalib_destseg.data import DEFAULT_CATEGORY, make_synthetic_dataset
from anomalib_destseg.training import RESUME_CHECKPOINT, latest_resume_checkpoint
from anomalib_destseg.training.checkpoints import CheckpointFileError, check_checkpoint_file

STUDENT_STEPS = SEGMENTATION_STEPS = 5
LOGGER = "anomalib_destseg.training.callbacks.periodic_checkpoint"
RUN = Path("DeSTSeg") / "MVTecAD" / DEFAULT_CATEGORY

pytestmark = pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended")


class ValidationCounter(Callback):
    """The optimiser step at each validation run."""

    def __init__(self) -> None:
        self.at: list[int] = []

    def on_validation_start(self, trainer, pl_module) -> None:
        self.at.append(pl_module.global_step)


class TerminateAtEpochEnd(Callback):
    """Send this process SIGTERM at the end of the first epoch that ends after ``step`` (its skipped batch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not took_a_step(outputs) and pl_module.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def ten_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ten_images")
    make_synthetic_dataset(root, image_size=TINY_SIZE, num_train=10, num_test_good=2, num_test_defect=2, seed=0)
    return root


def _fit(dataset: Path, root: Path, teacher: Path, every_n_steps: int = 3, callbacks=(), ckpt_path=None) -> DeSTSeg:
    lightning.seed_everything(0)
    model = tiny_model(
        DeSTSeg,
        teacher,
        student_steps=STUDENT_STEPS,
        segmentation_steps=SEGMENTATION_STEPS,
        checkpoint_every_n_steps=every_n_steps,
        checkpoint_every_seconds=0,
        evaluator=False,
    )
    datamodule = MVTecAD(root=dataset, category=DEFAULT_CATEGORY, train_batch_size=4, eval_batch_size=4, num_workers=0)
    quiet_cpu_engine(root, callbacks).fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return model


def _weights(model: DeSTSeg) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.model.state_dict().items()}


def _assert_identical(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    different = [key for key in expected if not torch.equal(actual[key], expected[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _held_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def _saves(records: list[logging.LogRecord]) -> list[tuple[int, str]]:
    """(step, why) of each 'Saved ... at step N (why)' debug line."""
    return [(r.args[1], r.args[2]) for r in records if r.name == LOGGER and r.msg.startswith("Saved")]


@pytest.fixture(scope="module")
def uninterrupted(ten_images: Path, teacher_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted run: its final weights, its results root, its save log and its validations."""
    root = tmp_path_factory.mktemp("uninterrupted")
    counter = ValidationCounter()
    handler = _ListHandler()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    level = logger.level
    # setLevel, not an assignment to .level: setLevel clears logging's cache of enabled levels, which an earlier
    # test's run (at the default level) has filled; with the stale cache the debug lines were dropped.
    logger.setLevel(logging.DEBUG)
    try:
        model = _fit(ten_images, root, teacher_weights, callbacks=(counter,))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return {"weights": _weights(model), "root": root, "saves": _saves(handler.records), "validations": counter.at}


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_saves_fall_on_epoch_ends_within_the_interval_and_at_the_end_of_stage_1(uninterrupted) -> None:
    """Interval 3 steps, epochs of 2 steps. At the ends of epochs 1 and 2 (steps 2, 4) waiting for the next epoch
    end would pass the interval: save. Step 5 ends stage 1 (mid-epoch): save. At step 6 the next epoch end is 3
    steps away: wait. Step 8 is 3 steps on, the last step of its epoch: saved at the epoch's end. Never after the
    last step (10)."""
    assert uninterrupted["saves"] == [
        (2, "epoch end"),
        (4, "epoch end"),
        (5, "end of stage 1, mid-epoch"),
        (8, "epoch end"),
    ]
    folder = uninterrupted["root"] / RUN / "v0" / "weights" / "lightning"
    assert sorted(p.name for p in folder.iterdir()) == ["model.ckpt", RESUME_CHECKPOINT]  # no partial file left
    assert _held_step(folder / RESUME_CHECKPOINT) == 8
    check_checkpoint_file(folder / RESUME_CHECKPOINT)


def test_validation_runs_once_after_the_last_step_although_batches_are_skipped(uninterrupted) -> None:
    """Lightning counts batches (15 by step 10 here); a count-based interval of 10 would validate at step 7."""
    assert uninterrupted["validations"] == [STUDENT_STEPS + SEGMENTATION_STEPS]


def test_a_crashed_run_resumed_from_an_epoch_end_save_equals_the_uninterrupted_run(
    uninterrupted, ten_images: Path, teacher_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Crash before step 10: resume.ckpt holds step 8 (an epoch end), the log says so; the resumed run, in a new
    folder that holds its own resume.ckpt from the start, ends with bit-identical weights."""
    with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(RuntimeError, match="simulated crash"):
        _fit(ten_images, tmp_path, teacher_weights, callbacks=(crash_before(9),))
    (message,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    saved = tmp_path / RUN / "v0" / "weights" / "lightning" / RESUME_CHECKPOINT
    assert f"Training stopped at step 9 of 10 (RuntimeError); {saved} holds step 8" in message

    class FirstStepFolder(Callback):  # before the resumed run's first step: what does latest/ hold?
        adopted = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.adopted is None:
                self.adopted = latest_resume_checkpoint(tmp_path, pl_module, trainer.datamodule)

    probe = FirstStepFolder()
    resumed = _fit(ten_images, tmp_path, Path("/nonexistent/teacher.pth"), callbacks=(probe,), ckpt_path=saved)
    assert probe.adopted == (tmp_path / RUN / "v1" / "weights" / "lightning" / RESUME_CHECKPOINT).resolve()
    assert _held_step(saved) == 8  # the file resumed from is not touched by the new run
    _assert_identical(_weights(resumed), uninterrupted["weights"])


class Fault(Callback):
    """At the end of the epoch that ends after step ``step`` (its skipped batch), make every training image
    unreadable, or press Ctrl+C."""

    def __init__(self, step: int, images: list[Path] | None = None) -> None:
        self.step, self.images = step, images

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if took_a_step(outputs) or pl_module.global_step != self.step:
            return
        if self.images is None:
            raise KeyboardInterrupt
        for image in self.images:
            image.write_bytes(b"not a PNG any more")


def test_an_image_that_becomes_unreadable_stops_training_and_the_run_resumes_once_fixed(
    uninterrupted, ten_images: Path, teacher_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The images become unreadable after step 8 (its epoch-end save is made in the same batch's hooks): the next
    epoch's first batch fails with PIL's error naming a file, the log names resume.ckpt at step 8, and with the
    images restored the resumed run ends with the uninterrupted weights."""
    data = tmp_path / "data"
    shutil.copytree(ten_images, data)
    images = sorted((data / DEFAULT_CATEGORY / "train" / "good").glob("*.png"))
    originals = [image.read_bytes() for image in images]
    with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(UnidentifiedImageError, match=r"\.png"):
        _fit(data, tmp_path, teacher_weights, callbacks=(Fault(8, images),))
    saved = tmp_path / RUN / "v0" / "weights" / "lightning" / RESUME_CHECKPOINT
    (message,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert f"(UnidentifiedImageError); {saved} holds step 8: resume with ckpt_path={saved}" in message
    for image, original in zip(images, originals, strict=True):
        image.write_bytes(original)
    resumed = _fit(data, tmp_path, teacher_weights, ckpt_path=saved)
    _assert_identical(_weights(resumed), uninterrupted["weights"])


def test_ctrl_c_is_reported_with_the_file_to_resume_from(
    ten_images: Path, teacher_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """KeyboardInterrupt (Lightning shuts down and exits with status 1) after step 6: the last save is step 5."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(SystemExit):
            _fit(ten_images, tmp_path, teacher_weights, callbacks=(Fault(6),))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl+C while it shuts down
    saved = tmp_path / RUN / "v0" / "weights" / "lightning" / RESUME_CHECKPOINT
    (message,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert f"Training stopped at step 6 of 10 (KeyboardInterrupt); {saved} holds step 5" in message
    assert _held_step(saved) == 5


def test_sigterm_saves_the_current_step_and_the_resume_is_exact(
    uninterrupted, ten_images: Path, teacher_weights: Path, tmp_path: Path
) -> None:
    """SIGTERM after step 4 (periodic saves off but for the end of stage 1): Lightning stops after the batch and
    resume.ckpt then holds step 4; resuming from it gives the uninterrupted weights."""
    with pytest.raises(SIGTERMException):
        _fit(ten_images, tmp_path, teacher_weights, every_n_steps=1000, callbacks=(TerminateAtEpochEnd(4),))
    saved = tmp_path / RUN / "v0" / "weights" / "lightning" / RESUME_CHECKPOINT
    assert _held_step(saved) == 4
    resumed = _fit(ten_images, tmp_path, teacher_weights, ckpt_path=saved)
    _assert_identical(_weights(resumed), uninterrupted["weights"])


def test_a_failed_save_keeps_the_previous_file_and_training_goes_on(
    uninterrupted, ten_images: Path, teacher_weights: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    """The disk is full for the saves at steps 4 and 5 (half the bytes written, then ENOSPC): each is reported,
    resume.ckpt keeps step 2 meanwhile (the next save, at 8, finds it), no partial file stays, and training ends
    with the uninterrupted weights."""
    real_save = torch.save
    folder = tmp_path / RUN / "v0" / "weights" / "lightning"
    attempts = []

    def disk_full_for_resume_saves_2_and_3(obj, handle, *args, **kwargs):
        if getattr(handle, "name", "").endswith(RESUME_CHECKPOINT + ".partial"):
            attempts.append(_held_step(folder / RESUME_CHECKPOINT) if (folder / RESUME_CHECKPOINT).exists() else None)
            if len(attempts) in (2, 3):
                handle.write(b"PK" + b"\0" * 1000)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_for_resume_saves_2_and_3)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = _fit(ten_images, tmp_path, teacher_weights)
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "at step 4 (OSError: [Errno 28] No space left on device); the file keeps step 2" in warnings[0]
    assert "at step 5" in warnings[1]
    assert attempts == [None, 2, 2, 2]  # the failed saves at 4 and 5 left step 2 in place
    assert sorted(p.name for p in folder.iterdir()) == ["model.ckpt", RESUME_CHECKPOINT]
    assert _held_step(folder / RESUME_CHECKPOINT) == 8
    _assert_identical(_weights(model), uninterrupted["weights"])


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_a_damaged_checkpoint_is_refused_before_training_and_left_as_it_is(
    uninterrupted, ten_images: Path, teacher_weights: Path, tmp_path: Path, damage: str
) -> None:
    """Half a checkpoint, or one byte flipped in the middle (torch.load alone would load it with a wrong weight)."""
    good = (uninterrupted["root"] / RUN / "v0" / "weights" / "lightning" / RESUME_CHECKPOINT).read_bytes()
    data = bytearray(good[: len(good) // 2] if damage == "truncated" else good)
    if damage == "corrupted":
        data[len(data) // 2] ^= 0xFF
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(bytes(data))
    problem = (
        "truncated or not a torch checkpoint" if damage == "truncated" else "does not match (the file is corrupted)"
    )
    with pytest.raises(
        CheckpointFileError, match=r"damaged\.ckpt is not a complete checkpoint: .*" + re.escape(problem)
    ):
        _fit(ten_images, tmp_path / "run", teacher_weights, ckpt_path=damaged)
    assert damaged.read_bytes() == bytes(data)
