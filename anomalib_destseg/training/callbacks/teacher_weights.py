"""Load the frozen teacher's ImageNet weights when a run starts, and never run with a random teacher."""

from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_destseg.components.teacher import TeacherWeightsError


class TeacherWeights(Callback):
    """Load the teacher's weights (``teacher_weights``) at set-up; refuse to fit, validate, test or predict without.

    Lightning restores ``ckpt_path`` only after set-up, so a failure to load is kept and raised when the run starts,
    and only if no checkpoint has provided the weights by then: resuming or testing a checkpoint needs neither the
    weights file nor the network. The teacher's ``pretrained`` buffer records whether weights were loaded.
    """

    def __init__(self) -> None:
        self._error: Exception | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Load the weights unless the teacher has them already (a checkpoint restored later replaces them)."""
        del trainer, stage
        self._error = None
        if not bool(pl_module.model.teacher.pretrained):
            try:
                pl_module.model.teacher.load_weights(pl_module.hparams.teacher_weights)
            except (OSError, TeacherWeightsError) as error:  # FileNotFoundError is an OSError
                self._error = error

    def _require(self, pl_module: LightningModule) -> None:
        if bool(pl_module.model.teacher.pretrained):
            return
        error, self._error = self._error, None
        if error is not None:
            raise error
        msg = "The teacher has no ImageNet weights loaded; refusing to run with a random teacher."
        raise RuntimeError(msg)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Never train with a random teacher."""
        self._require(pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Never evaluate with a random teacher."""
        self._require(pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Never test with a random teacher."""
        self._require(pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Never predict with a random teacher."""
        self._require(pl_module)
