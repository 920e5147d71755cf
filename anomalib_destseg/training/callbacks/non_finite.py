"""Stop training on a non-finite loss or gradient, keeping the state from before that step as ``last_good.ckpt``."""

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_destseg.components.stage import Stage
from anomalib_destseg.training.checkpoints import checkpoint_folder

LAST_GOOD_CHECKPOINT = "last_good.ckpt"


class NonFiniteGuard(Callback):
    """Undo a step whose loss or gradient is not finite, save the state before it, and stop with an error.

    Before each batch it keeps the trained modules' buffers (BatchNorm statistics change in the forward pass) and the
    anomaly stream's state. Just before the optimiser step it checks the module's ``step_loss`` and the gradient
    norm (one device synchronisation). On a non-finite value it puts buffers and stream back, saves
    ``last_good.ckpt`` in the checkpoint callback's folder (``<results>/weights/lightning/`` with anomalib's Engine;
    resume from it with ``ckpt_path``) and raises a ``FloatingPointError`` naming the step, the stage and the file;
    the parameters are never updated. With fp16 gradient scaling a non-finite gradient after a finite loss is the
    scaler's business (it skips the step and lowers its scale), not an error.
    """

    def __init__(self) -> None:
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._stream_state: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        """Keep what the step may change before its optimiser step: buffers of the trained modules, the stream."""
        del trainer, args
        stage = Stage.at(pl_module.global_step, pl_module.hparams.student_steps)
        modules = pl_module.model.student_modules if stage is Stage.STUDENT else pl_module.model.segmentation_modules
        self._buffers = [(buffer, buffer.clone()) for module in modules for buffer in module.buffers()]
        stream = getattr(pl_module, "anomaly_stream", None)
        self._stream_state = stream.state_dict() if stream is not None else None

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Raise before the parameters change if the step's loss or gradient norm is not finite."""
        loss = pl_module.step_loss
        gradients = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(gradients) if gradients else loss.new_zeros(())
        loss_finite, norm_finite = (bool(value) for value in torch.stack([loss.isfinite(), norm.isfinite()]))
        if loss_finite and norm_finite:
            return
        if loss_finite and getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 overflow: the gradient scaler skips this step
        self._undo(pl_module)
        step = pl_module.global_step
        stage = Stage.at(step, pl_module.hparams.student_steps)
        what = f"loss ({loss.item()})" if not loss_finite else f"gradient norm ({norm.item()})"
        where = f"non-finite {what} at optimiser step {step} of {pl_module.total_steps}"
        try:
            saved = self._save_last_good(trainer, pl_module)
        except Exception as error:  # report the original problem, with why nothing was saved
            saved = f"could not be saved ({type(error).__name__}: {error})"
        msg = (
            f"Training stopped: {where} (stage {stage.number}, {stage.value}). The state from before this step {saved}."
        )
        raise FloatingPointError(msg)

    def _undo(self, pl_module: LightningModule) -> None:
        with torch.no_grad():
            for buffer, value in self._buffers:
                buffer.copy_(value)
        if self._stream_state is not None:
            pl_module.anomaly_stream.load_state_dict(self._stream_state)

    @staticmethod
    def _save_last_good(trainer: Trainer, pl_module: LightningModule) -> str:
        tensors = [*pl_module.model.parameters(), *pl_module.model.buffers()]
        if not all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
            return "was not saved: the weights themselves are already non-finite (use an earlier checkpoint)"
        path = checkpoint_folder(trainer) / LAST_GOOD_CHECKPOINT
        trainer.save_checkpoint(path, weights_only=False)  # resumable (Lightning logs its default otherwise)
        return f"is saved in {path} (inspect it, or resume from it with ckpt_path once the cause is fixed)"
