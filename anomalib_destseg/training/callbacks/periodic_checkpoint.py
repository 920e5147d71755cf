"""Keep a resumable checkpoint up to date during training, so that a killed run loses minutes, not the run.

The models validate (and anomalib saves ``model.ckpt``) only after the last step; without this callback a run
stopped before then leaves nothing to resume from.
"""

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from anomalib_destseg.components.stage import took_a_step
from anomalib_destseg.training.checkpoints import RESUME_CHECKPOINT, checkpoint_folder

logger = logging.getLogger(__name__)


class PeriodicCheckpoint(Callback):
    """Write ``resume.ckpt`` next to anomalib's checkpoint during training, so that a killed run can resume.

    When it saves:

    - at the end of stage 1 (the student's), so that stage 2 never has to train the student again;
    - every ``every_n_steps`` optimiser steps or ``every_seconds`` seconds, whichever comes first (0 turns a trigger
      off). Where an epoch is shorter than the interval, the save is brought forward to the last epoch end before it
      falls due (judged from the epoch just finished): resuming from an epoch end is exact, from mid-epoch it is not
      (Lightning restarts a plain ``DataLoader``'s epoch with a new shuffle);
    - when Lightning stops on SIGTERM (it finishes the current step first), so that nothing is lost.

    Not after the last step: validation follows, and anomalib saves ``model.ckpt``. Each save replaces the previous
    one atomically (through :class:`~anomalib_destseg.training.callbacks.SafeCheckpointFiles`, which the models
    add too), so disk use is one checkpoint (two while writing). A failed save (a full disk, say) is logged and
    training goes on; the previous file stays.
    When a resumed run starts in a new folder (anomalib's Engine makes ``v1``, ``v2``, ...), the checkpoint it
    resumed from is linked there as its ``resume.ckpt`` until it writes its own, so ``latest/`` always holds one.
    When training stops on an error, the log says which step the file holds and how to resume.

    Args:
        every_n_steps: Optimiser steps between saves at most (0: no step trigger).
        every_seconds: Seconds between saves at most (0: no time trigger).

    Example:
        >>> callback = PeriodicCheckpoint(every_n_steps=250, every_seconds=300)
        >>> callback.every_n_steps, callback.every_seconds
        (250, 300.0)

    """

    def __init__(self, every_n_steps: int = 250, every_seconds: float = 300.0) -> None:
        self.every_n_steps = int(every_n_steps)
        self.every_seconds = float(every_seconds)
        self.path: Path | None = None
        self.saved_step: int | None = None  # the step the run's resume.ckpt holds
        self._holder: Path | None = None  # the file holding it (the resumed-from one if it could not be linked)
        self._last_save = (0, 0.0)  # (step, time) of the last save, or of the start
        self._epoch_start = (0, 0.0)
        self._steps_per_epoch = 0  # the most optimiser steps seen in one epoch
        self._at_epoch_end = False  # a save fell due at the epoch's last step: it is made at the epoch's end

    # --- when to save -------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the clocks; in a resumed run's new folder, link the checkpoint it resumed from."""
        now = time.monotonic()
        self._last_save = self._epoch_start = (pl_module.global_step, now)
        self.path = checkpoint_folder(trainer) / RESUME_CHECKPOINT
        resumed_from = Path(trainer.ckpt_path) if trainer.ckpt_path else None
        self.saved_step = pl_module.global_step if resumed_from else None  # the same on every DDP process
        self._holder = self.path  # the file that holds saved_step
        if trainer.is_global_zero:
            if resumed_from is None and self.path.exists():
                logger.warning("%s is from an earlier run; this run's first save replaces it.", self.path)
            if resumed_from is not None and not self._adopt(resumed_from):
                self._holder = resumed_from
            logger.info(
                "Resumable checkpoint: %s, written at the end of stage 1 and every %s (resume: ckpt_path=<that file>).",
                self.path,
                self._describe_interval(),
            )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Note where the epoch starts."""
        del trainer
        self._epoch_start = (pl_module.global_step, time.monotonic())
        self._at_epoch_end = False

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: object) -> None:
        """Save when due (at the epoch's end if only skipped batches remain), or at an epoch's end ahead of time.

        At an epoch's end a save is also made if an interval would run out before the next epoch ends. Epoch-end
        saves are made here, after the epoch's last batch (skipped or not), rather than in ``on_train_epoch_end``:
        Lightning resumes a checkpoint saved there with one batch too many. For the same reason a SIGTERM is
        answered here (Lightning raises its ``SIGTERMException`` right after this hook).
        """
        del args
        step = pl_module.global_step
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if took_a_step(outputs) and step < pl_module.total_steps:
            due = self._due(trainer, pl_module)
            epoch_ends_here = last_batch or step - self._epoch_start[0] == self._steps_per_epoch
            if due and epoch_ends_here and due != "SIGTERM":  # only skipped batches remain: save at the epoch's end
                self._at_epoch_end = True  # (not on SIGTERM: Lightning stops right after this batch)
            elif due:
                self._save(trainer, step, f"{due}, mid-epoch")
        if last_batch:
            self._end_epoch(trainer, pl_module)

    def _end_epoch(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save if a save fell due in the epoch's last step, or will fall due before the next epoch ends."""
        step, now = pl_module.global_step, time.monotonic()
        ahead = (step - self._epoch_start[0], now - self._epoch_start[1])  # the next epoch, judged by this one
        self._steps_per_epoch = max(self._steps_per_epoch, ahead[0])
        if step >= pl_module.total_steps or step == self.saved_step:
            return
        if self._at_epoch_end or self._due(trainer, pl_module, ahead):
            self._save(trainer, step, "epoch end")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """On any error during training, say which step the resumable checkpoint holds and how to resume.

        A SIGTERM that came too late for ``on_train_batch_end`` is saved here (single process only: a save is
        collective under DDP, and there every process stops together after the hook).
        """
        if trainer.state.fn != "fit" or self.path is None:
            return
        step = pl_module.global_step
        late_sigterm = isinstance(exception, SIGTERMException) and trainer.world_size == 1
        if late_sigterm and self.saved_step != step < pl_module.total_steps:
            self._save(trainer, step, "SIGTERM, mid-epoch")
        if self.saved_step is None:
            where = "no resumable checkpoint was written yet; the run has to start again"
        else:
            where = f"{self._holder} holds step {self.saved_step}: resume with ckpt_path={self._holder}"
        logger.error(
            "Training stopped at step %d of %d (%s); %s.", step, pl_module.total_steps, type(exception).__name__, where
        )

    def _due(self, trainer: Trainer, pl_module: LightningModule, ahead: tuple[int, float] = (0, 0.0)) -> str:
        """Why a save is due now ('' if not): the end of stage 1, a SIGTERM, or an interval running out.

        With ``ahead`` (the next epoch's steps and seconds, at an epoch's end), an interval counts as run out if
        waiting for the next epoch's end would pass it. Rank 0 decides for every DDP process (the save is
        collective).
        """
        step = pl_module.global_step
        steps = step - self._last_save[0] + ahead[0]
        seconds = time.monotonic() - self._last_save[1] + ahead[1]
        due = ""
        if step == pl_module.hparams.student_steps and not ahead[0]:
            due = "end of stage 1"
        elif trainer.received_sigterm:
            due = "SIGTERM"
        elif ahead[0] and (0 < self.every_n_steps < steps or 0 < self.every_seconds < seconds):
            due = "interval"  # waiting for the next epoch end would pass the interval
        elif not ahead[0] and (0 < self.every_n_steps <= steps or 0 < self.every_seconds <= seconds):
            due = "interval"
        return trainer.strategy.broadcast(due, src=0) if trainer.world_size > 1 else due

    def _describe_interval(self) -> str:
        parts = [f"{self.every_n_steps} steps"] * (self.every_n_steps > 0)
        parts += [f"{self.every_seconds:g} s"] * (self.every_seconds > 0)
        return " or ".join(parts) + " (whichever comes first)" if parts else "(no periodic saves)"

    # --- saving -------------------------------------------------------------------------------------------------
    def _save(self, trainer: Trainer, step: int, why: str) -> None:
        started = time.monotonic()
        try:
            # Full state (optimisers, loops, callbacks) for resuming; saying so spares Lightning's log line.
            trainer.save_checkpoint(self.path, weights_only=False)  # atomic: SafeCheckpointFiles is in place
        except OSError as error:
            kept = f"step {self.saved_step}" if self.saved_step is not None else "nothing yet"
            logger.warning(
                "Could not write the resumable checkpoint %s at step %d (%s: %s); the file keeps %s. Training goes on.",
                self.path,
                step,
                type(error).__name__,
                error,
                kept,
            )
            return
        finally:
            self._last_save = (step, time.monotonic())
            self._at_epoch_end = False
        self.saved_step, self._holder = step, self.path
        logger.debug("Saved %s at step %d (%s) in %.2f s.", self.path, step, why, time.monotonic() - started)

    def _adopt(self, resumed_from: Path) -> bool:
        """In a resumed run's new folder, link (or copy) the checkpoint it resumed from as ``resume.ckpt``.

        Returns whether ``resume.ckpt`` now holds the step the run resumed from.
        """
        if self.path.exists() and self.path.resolve() == resumed_from.resolve():
            return True
        if not resumed_from.is_file():  # a remote checkpoint: nothing to link
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".link")
        temporary.unlink(missing_ok=True)
        try:
            try:
                os.link(resumed_from, temporary)
            except OSError:  # another file system, or no hard links: copy
                shutil.copyfile(resumed_from, temporary)
            os.replace(temporary, self.path)
        except OSError as error:  # a convenience only: training goes on, and its first save writes the file
            temporary.unlink(missing_ok=True)
            logger.warning("Could not put %s in this run's folder as %s (%s).", resumed_from, self.path, error)
            return False
        return True
