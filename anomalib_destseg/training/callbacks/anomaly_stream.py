"""Start, save and restore the random stream of the synthetic anomalies, so that runs repeat and resume exactly."""

import logging
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_destseg.training.distributed import seed_each_process
from anomalib_destseg.training.random_stream import RANDOM_STATE_KEY, checkpoint_random_state, start_stream

logger = logging.getLogger(__name__)


class AnomalyStream(Callback):
    """Give the module its anomaly stream (``pl_module.anomaly_stream``) and keep it in checkpoints.

    Checkpoints also hold torch's global CPU generator, which drives the data loader's shuffling. When fitting
    resumes, both are restored: a run interrupted at the end of an epoch and resumed on CPU then ends with exactly
    the weights of an uninterrupted run. Interrupted mid-epoch, the anomalies still continue exactly, but Lightning
    restarts the epoch's data loader (plain DataLoaders cannot resume), so the rest of that epoch sees a fresh
    shuffle. Loading a checkpoint for testing, prediction or ``load_from_checkpoint`` changes no random state.
    """

    def __init__(self) -> None:
        self._resumed: dict[str, Any] | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the stream from the seed (one per DDP process), or continue the checkpoint's."""
        seed_each_process(pl_module)
        resumed, self._resumed = self._resumed, None
        pl_module.anomaly_stream = start_stream(resumed, pl_module.global_step, trainer.world_size)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Add the stream's state and torch's global CPU generator state to the checkpoint."""
        del trainer
        if pl_module.anomaly_stream is not None:
            checkpoint[RANDOM_STATE_KEY] = checkpoint_random_state(pl_module.anomaly_stream.state_dict())

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """When fitting resumes, restore the global generator now and the stream when training starts.

        The global generator must be back before the data loader draws its shuffling seed.
        """
        del pl_module
        if trainer.state.fn != "fit" or trainer.ckpt_path is None:
            return
        state = checkpoint.get(RANDOM_STATE_KEY)
        if state is None:
            logger.info("The checkpoint holds no random state (older version): anomalies start a new stream.")
            return
        torch.set_rng_state(state["global_cpu"])
        self._resumed = state["anomaly_stream"]
