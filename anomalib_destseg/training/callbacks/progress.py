"""Progress lines in the log: the progress bar is invisible in non-interactive logs (CI, nohup, cluster jobs)."""

import logging
import time

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_destseg.components.stage import Stage, took_a_step

logger = logging.getLogger(__name__)

LINES_PER_RUN = 20


class TrainingProgress(Callback):
    """About twenty lines per run: step, stage, loss, seconds per step and the time left in the current stage.

    The rate is that of the current stage only (a segmentation step costs several student steps), so the time left
    is given for the current stage. The end of stage 1 is announced.
    """

    def __init__(self) -> None:
        self._stage_start: tuple[float, int] | None = None
        self._stage: Stage | None = None
        self._last_step_end: float | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the clock."""
        del trainer
        self._stage_start = (time.perf_counter(), pl_module.global_step)
        self._stage, self._last_step_end = None, None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: dict | None, *args: object
    ) -> None:
        """Log a line every ``total_steps / 20`` steps and at the last step; skipped batches are not steps."""
        del trainer, args
        if not took_a_step(outputs):
            return
        done, total = pl_module.global_step, pl_module.total_steps
        student_steps = pl_module.hparams.student_steps
        stage = Stage.at(done - 1, student_steps)
        now = time.perf_counter()
        start = self._stage_start or (now, done - 1)
        if self._stage is not stage:  # a new stage: time it from its first step
            self._stage, start = stage, (self._last_step_end or start[0], done - 1)
            self._stage_start = start
        self._last_step_end = now
        if done % max(1, total // LINES_PER_RUN) == 0 or done == total:
            started, first_step = start
            per_step = (now - started) / max(done - first_step, 1)
            stage_end = student_steps if stage is Stage.STUDENT else total
            loss = outputs["loss"]
            logger.info(
                "step %d/%d (%s stage): loss %.4f, %.2f s/step, about %.0f s left in this stage",
                done,
                total,
                stage.value,
                loss.item() if isinstance(loss, torch.Tensor) else loss,
                per_step,
                per_step * (stage_end - done),
            )
        if done == student_steps and done < total:  # after the step's own line: the stage ends with that step
            logger.info("Stage 1 (student) finished at step %d; training the segmentation network.", done)
