"""Atomic checkpoint writes and checked checkpoint reads for every run of the models."""

from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_destseg.training.checkpoints import SafeCheckpointIO


class SafeCheckpointFiles(Callback):
    """Put :class:`~anomalib_destseg.training.checkpoints.SafeCheckpointIO` in front of the strategy's checkpoint IO.

    From ``setup`` to ``teardown`` of every fit, test, predict or validation, each checkpoint the trainer writes
    (anomalib's ``model.ckpt``, ``resume.ckpt``, ``last_good.ckpt``) replaces its target only once complete and on
    disk, and each checkpoint it loads is checked first: a truncated or corrupted file is refused with an error that
    names it, before any weight is loaded.

    Example:
        >>> from anomalib.engine import Engine
        >>> engine = Engine(callbacks=[SafeCheckpointFiles()])  # the models add it themselves

    """

    def __init__(self) -> None:
        self._inner = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Wrap the strategy's checkpoint IO."""
        del pl_module, stage
        if not isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO):
            self._inner = trainer.strategy.checkpoint_io
            trainer.strategy.checkpoint_io = SafeCheckpointIO(self._inner)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Give the strategy its own checkpoint IO back (anomalib's Engine looks for it between runs)."""
        del pl_module, stage
        if self._inner is not None:
            trainer.strategy.checkpoint_io, self._inner = self._inner, None
