"""Checkpoint files that survive faults: atomic writes, and a clear refusal of damaged files.

- :func:`write_atomically` writes through a temporary file in the same folder and renames it over the target only
  once it is complete and on disk: a kill, a power cut or a full disk during the write leaves the previous file
  intact.
- :func:`check_checkpoint_file` reads a file's zip structure and checksums before torch loads it. torch checkpoints
  are zip archives with a CRC-32 per entry, which ``torch.load`` does not check: a file damaged in the middle would
  otherwise load silently with wrong weights; a truncated one fails with miniz's internal error.
- :class:`SafeCheckpointIO` does both for every checkpoint Lightning saves or loads while the
  :class:`~anomalib_destseg.training.callbacks.SafeCheckpointFiles` callback is in place (all of the models' runs).

Example:
    >>> import torch, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "demo.ckpt"
    >>> torch.save({"step": 3}, path)
    >>> check_checkpoint_file(path)
    >>> _ = path.write_bytes(path.read_bytes()[:100])  # truncated
    >>> check_checkpoint_file(path)
    Traceback (most recent call last):
    ...
    anomalib_destseg.training.checkpoints.CheckpointFileError: ...demo.ckpt is not a complete checkpoint ...

"""

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Trainer

RESUME_CHECKPOINT = "resume.ckpt"
"""The resumable checkpoint that training keeps up to date, next to anomalib's ``model.ckpt``."""

TEMPORARY_SUFFIX = ".partial"
"""Suffix of the file being written; it only ever replaces the target once complete."""


class CheckpointFileError(ValueError):
    """A checkpoint file that is missing, truncated or corrupted (the message names the file and what is wrong)."""


def checkpoint_folder(trainer: Trainer) -> Path:
    """The folder of the run's checkpoints.

    The checkpoint callback's (``<results>/weights/lightning/`` with anomalib's Engine), else
    ``<default_root_dir>/weights/lightning``.
    """
    directory = getattr(trainer.checkpoint_callback, "dirpath", None)
    return Path(directory or Path(trainer.default_root_dir) / "weights" / "lightning")


def latest_resume_checkpoint(results: str | Path, model: Any, datamodule: Any) -> Path:
    """The ``resume.ckpt`` of the latest run of ``model`` on ``datamodule`` under anomalib's results folder.

    anomalib's Engine writes each run to ``<results>/<model>/<dataset>/<category>/v<N>/`` and points ``latest`` at
    the newest; a resumed run starts a new ``v<N>`` that holds the checkpoint it resumed from until it writes its own.

    Args:
        results: The Engine's ``default_root_dir`` (``results`` by default).
        model: The model (its ``name``).
        datamodule: The datamodule (its ``name`` and ``category``).

    Raises:
        FileNotFoundError: Naming the path, when the latest run left no resumable checkpoint.

    Example:
        >>> path = latest_resume_checkpoint("results", model, datamodule)  # doctest: +SKIP
        >>> engine.fit(model, datamodule=datamodule, ckpt_path=path)  # doctest: +SKIP

    """
    category = getattr(datamodule, "category", None) or ""
    latest = Path(results) / model.name / datamodule.name / category / "latest"
    path = latest / "weights" / "lightning" / RESUME_CHECKPOINT
    if not path.is_file():
        msg = f"Nothing to resume: {path} does not exist (no run yet, or it stopped before its first save)."
        raise FileNotFoundError(msg)
    return path.resolve()


def write_atomically(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write ``checkpoint`` with ``torch.save`` so that ``path`` is always either the old file or the complete new one.

    The bytes go to ``path`` + ``.partial`` in the same folder (streamed, not held in memory), are flushed to disk,
    and the file is renamed over ``path`` (atomic on one file system), then the folder is flushed. On any failure the
    partial file is removed and the error re-raised (a failed write as an ``OSError`` naming the file and the free
    space, also where torch reports it as a ``RuntimeError``); ``path`` is untouched. (Lightning's own save writes
    to a file in the system's temporary folder and moves it, which copies across file systems and leaves the file
    behind when killed.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    try:
        with temporary.open("wb") as handle:
            try:
                torch.save(checkpoint, handle)
            except RuntimeError as error:  # torch's zip writer reports a failed write (a full disk) this way
                free = shutil.disk_usage(path.parent).free / 2**20
                msg = f"could not write {temporary} ({free:.0f} MiB free on its disk): {error}"
                raise OSError(msg) from error
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _flush_folder(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _flush_folder(path: Path) -> None:
    """Flush a folder, so that a rename in it is on disk (folders cannot be opened on Windows: skipped there)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def check_checkpoint_file(path: str | Path) -> None:
    """Raise :class:`CheckpointFileError` unless ``path`` is a complete zip archive whose checksums all match.

    Reads the whole file once (about a second per GB). Leaves the file as it is.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Checkpoint {path} does not exist."
        raise CheckpointFileError(msg)
    problem = None
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            problem = f"the checksum of its entry {damaged!r} does not match (the file is corrupted)"
    except zipfile.BadZipFile as error:
        problem = f"it is truncated or not a torch checkpoint ({error})"
    except (OSError, EOFError) as error:
        problem = f"it could not be read ({type(error).__name__}: {error})"
    if problem is not None:
        others = sorted(str(p) for p in path.parent.glob("*.ckpt") if p.name != path.name)
        hint = f" Other checkpoints in that folder: {', '.join(others)}." if others else ""
        msg = f"{path} is not a complete checkpoint: {problem}. The file was left as it is.{hint}"
        raise CheckpointFileError(msg)


class SafeCheckpointIO(CheckpointIO):
    """A Lightning ``CheckpointIO`` that writes local files atomically and checks each file before loading it.

    Wraps the strategy's own checkpoint IO (anomalib's, with its safe globals for loading) and delegates the rest to
    it: remote paths, and saves with storage options.

    Args:
        inner: The checkpoint IO to delegate to.

    """

    def __init__(self, inner: CheckpointIO) -> None:
        self.inner = inner

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """Write a local file with :func:`write_atomically`; delegate anything else."""
        if storage_options is None and _is_local(path):
            write_atomically(checkpoint, path)
        else:
            self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Check a local file, then delegate (remote paths are delegated unchecked)."""
        if _is_local(path):
            check_checkpoint_file(path)
        return self.inner.load_checkpoint(path, *args, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        """Delegate."""
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        """Delegate."""
        self.inner.teardown()


def _is_local(path: Any) -> bool:
    return isinstance(path, str | os.PathLike) and "://" not in str(path)
