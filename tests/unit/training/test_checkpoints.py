"""Atomic checkpoint writes, the check of checkpoint files, the checkpoint arguments and finding the last run's file."""

import errno
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from anomalib_destseg import DeSTSeg
from anomalib_destseg.training import RESUME_CHECKPOINT, latest_resume_checkpoint
from anomalib_destseg.training.callbacks import PeriodicCheckpoint, SafeCheckpointFiles
from anomalib_destseg.training.checkpoints import CheckpointFileError, check_checkpoint_file, write_atomically


def test_write_atomically_replaces_the_file_and_leaves_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "run.ckpt"
    write_atomically({"step": 1, "w": torch.arange(3.0)}, path)
    write_atomically({"step": 2, "w": torch.arange(4.0)}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 2 and torch.equal(loaded["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["run.ckpt"]


def test_a_write_that_fails_half_way_leaves_the_previous_file_intact(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "run.ckpt"
    write_atomically({"step": 1}, path)
    before = path.read_bytes()

    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomically({"step": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]


def _checkpoint(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "good.ckpt"
    torch.save({"weights": torch.linspace(0, 1, 5000)}, path)
    return path, path.read_bytes()


def test_a_complete_checkpoint_passes_the_check(tmp_path: Path) -> None:
    path, _ = _checkpoint(tmp_path)
    check_checkpoint_file(path)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda data: data[: len(data) // 2], "it is truncated or not a torch checkpoint"),
        (lambda data: b"not a checkpoint at all", "it is truncated or not a torch checkpoint"),
        (lambda data: data[:-6000] + bytes([data[-6000] ^ 1]) + data[-5999:], "does not match (the file is corrupted)"),
    ],
    ids=["truncated", "not-a-zip", "one-bit-flipped"],
)
def test_a_damaged_checkpoint_is_named_with_its_problem_and_other_checkpoints(
    tmp_path: Path, damage, problem: str
) -> None:
    path, data = _checkpoint(tmp_path)
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(damage(data))
    content = damaged.read_bytes()
    with pytest.raises(CheckpointFileError) as raised:
        check_checkpoint_file(damaged)
    message = str(raised.value)
    assert message.startswith(f"{damaged} is not a complete checkpoint: ")
    assert problem in message
    assert f"Other checkpoints in that folder: {path}." in message
    assert damaged.read_bytes() == content


def test_a_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFileError, match=r"missing\.ckpt does not exist"):
        check_checkpoint_file(tmp_path / "missing.ckpt")


def test_latest_resume_checkpoint_follows_anomalib_s_latest_folder(tmp_path: Path) -> None:
    model, datamodule = SimpleNamespace(name="DeSTSeg"), SimpleNamespace(name="MVTecAD", category="bottle")
    with pytest.raises(FileNotFoundError, match=r"Nothing to resume: .*latest/weights/lightning/resume\.ckpt"):
        latest_resume_checkpoint(tmp_path, model, datamodule)
    run = tmp_path / "DeSTSeg" / "MVTecAD" / "bottle" / "v3"
    (run / "weights" / "lightning").mkdir(parents=True)
    (run / "weights" / "lightning" / RESUME_CHECKPOINT).write_bytes(b"x")
    (run.parent / "latest").symlink_to(run, target_is_directory=True)
    assert latest_resume_checkpoint(tmp_path, model, datamodule) == run / "weights" / "lightning" / RESUME_CHECKPOINT


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"checkpoint_every_n_steps": -1}, "checkpoint_every_n_steps must be a non-negative integer"),
        ({"checkpoint_every_n_steps": 2.5}, "checkpoint_every_n_steps must be a non-negative integer"),
        ({"checkpoint_every_n_steps": True}, "checkpoint_every_n_steps must be a non-negative integer"),
        ({"checkpoint_every_seconds": -1.0}, "checkpoint_every_seconds must be a non-negative number"),
        ({"checkpoint_every_seconds": float("nan")}, "checkpoint_every_seconds must be a non-negative number"),
    ],
)
def test_bad_checkpoint_intervals_are_refused(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeSTSeg(**arguments)


def test_the_intervals_reach_the_callback_and_both_zero_turns_it_off() -> None:
    (periodic,) = [
        c
        for c in DeSTSeg(checkpoint_every_n_steps=40, checkpoint_every_seconds=7.5).configure_callbacks()
        if isinstance(c, PeriodicCheckpoint)
    ]
    assert (periodic.every_n_steps, periodic.every_seconds) == (40, 7.5)
    callbacks = DeSTSeg(checkpoint_every_n_steps=0, checkpoint_every_seconds=0).configure_callbacks()
    assert not any(isinstance(c, PeriodicCheckpoint) for c in callbacks)
    assert any(isinstance(c, SafeCheckpointFiles) for c in callbacks)  # atomic writes and checked loads stay
