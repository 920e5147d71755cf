"""The two-stage training loop shared by DeSTSeg and PFADSeg, as an anomalib ``AnomalibModule``.

Stage 1 (``student_steps`` optimiser steps) trains the student with the cosine loss; stage 2
(``segmentation_steps``) freezes the student in eval mode and trains the segmentation network with focal + L1 loss.
Both stages use SGD (momentum 0.9, weight decay 1e-4) with the reference learning rates, by manual optimisation.
The stage follows from the optimiser step counter, so it survives checkpoint resumption.

Synthetic anomalies are made inside ``training_step`` on the pre-processed (resized, un-normalised) images; the
torch model normalises internally, so an exported model takes ``[0, 1]`` images like the training pipeline.
"""

import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from anomalib.models.components import AnomalibModule
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_destseg.destseg.loss import SegmentationLoss, StudentCosineLoss

from .anomaly_generator import SyntheticAnomalyGenerator
from .rotation import check_rotation, resolve_rotation, rotate_batch
from .student_teacher import SIZE_MULTIPLE, SegmentationGuidedStudentTeacher
from .teacher import IMAGENET

logger = logging.getLogger(__name__)

STUDENT_STAGE = "student"
SEGMENTATION_STAGE = "segmentation"


class TwoStageSegmentationModule(AnomalibModule):
    """Base Lightning module: arguments, optimisers, the two-stage ``training_step`` and the anomalib hooks.

    Subclasses implement :meth:`build_model`. See :class:`anomalib_destseg.DeSTSeg` for the arguments.
    """

    def __init__(
        self,
        student_steps: int = 1000,
        segmentation_steps: int = 4000,
        student_lr: float = 0.4,
        residual_lr: float = 0.1,
        head_lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        top_k: int = 100,
        focal_gamma: float = 4.0,
        anomaly_probability: float = 1.0,
        beta_range: tuple[float, float] = (0.0, 0.8),
        texture_dir: str | Path | None = None,
        rotation: str = "auto",
        denoising: bool = True,
        teacher_weights: str | Path = IMAGENET,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        _check_arguments(
            student_steps=student_steps,
            segmentation_steps=segmentation_steps,
            learning_rates={"student_lr": student_lr, "residual_lr": residual_lr, "head_lr": head_lr},
            momentum=momentum,
            weight_decay=weight_decay,
            anomaly_probability=anomaly_probability,
            beta_range=beta_range,
        )
        check_rotation(rotation)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.automatic_optimization = False
        self.model: SegmentationGuidedStudentTeacher = self.build_model()
        self.student_loss = StudentCosineLoss()
        self.segmentation_loss = SegmentationLoss(focal_gamma=focal_gamma)
        # Created when training starts, so that loading a checkpoint on another machine needs no texture folder.
        self.anomaly_generator: SyntheticAnomalyGenerator | None = None
        self.rotation_policy = "none"

    @abstractmethod
    def build_model(self) -> SegmentationGuidedStudentTeacher:
        """Create the torch model from ``self.hparams``."""

    # --- schedule -----------------------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        """Optimiser steps of both stages."""
        return self.hparams.student_steps + self.hparams.segmentation_steps

    def stage_at(self, step: int) -> str:
        """The training stage that optimiser step ``step`` (0-based) belongs to."""
        return STUDENT_STAGE if step < self.hparams.student_steps else SEGMENTATION_STAGE

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Steps decide the schedule; validation runs once, after the last step (it sets the thresholds)."""
        return {
            "max_steps": self.total_steps,
            "max_epochs": -1,
            "num_sanity_val_steps": 0,
            "check_val_every_n_epoch": None,
            "val_check_interval": self.total_steps,
        }

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS

    # --- components -------------------------------------------------------------------------------------------
    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only (default 256x256): anomalies are synthesised on [0, 1] images, the model normalises.

        Raises:
            ValueError: If a side of ``image_size`` is not a multiple of 32.
        """
        image_size = tuple(image_size or (256, 256))
        if len(image_size) != 2 or any(side <= 0 or side % SIZE_MULTIPLE for side in image_size):
            msg = f"image_size must be two positive multiples of {SIZE_MULTIPLE}, got {image_size}."
            raise ValueError(msg)
        return PreProcessor(transform=Compose([Resize(image_size, antialias=True)]))

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """anomalib's default test metrics plus pixel AP, AUPRO (FPR limit 0.3), IAP and IAP@90."""
        from anomalib_destseg.metrics import paper_evaluator

        return paper_evaluator()

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """SGD for the student (stage 1) and SGD with two parameter groups for the segmentation network (stage 2)."""
        hp = self.hparams
        student_parameters = [p for module in self.model.student_modules for p in module.parameters()]
        student_optimizer = torch.optim.SGD(
            student_parameters, lr=hp.student_lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )
        fast, slow = self.model.segmentation_parameter_groups()
        segmentation_optimizer = torch.optim.SGD(
            [{"params": fast, "lr": hp.residual_lr}, {"params": slow, "lr": hp.head_lr}],
            lr=hp.residual_lr,
            momentum=hp.momentum,
            weight_decay=hp.weight_decay,
        )
        return student_optimizer, segmentation_optimizer

    # --- hooks ----------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Load the teacher's ImageNet weights unless a checkpoint is about to provide them."""
        del stage
        resuming = self._trainer is not None and self.trainer.ckpt_path is not None
        if not bool(self.model.teacher.pretrained) and not resuming:
            self.model.teacher.load_weights(self.hparams.teacher_weights)

    def _require_pretrained_teacher(self) -> None:
        if not bool(self.model.teacher.pretrained):
            msg = "The teacher has no ImageNet weights loaded; refusing to run with a random teacher."
            raise RuntimeError(msg)

    def on_train_start(self) -> None:
        """Check the set-up and create the anomaly generator and rotation policy."""
        self._require_pretrained_teacher()
        if self.pre_processor and extract_transforms_by_type(self.pre_processor.transform, Normalize):
            msg = f"{self.name} normalises inside the model: remove Normalize from the pre-processor transform."
            raise ValueError(msg)
        datamodule = getattr(self.trainer, "datamodule", None)
        batch_size = getattr(datamodule, "train_batch_size", None)
        if batch_size is not None and batch_size < 2:
            msg = (
                f"train_batch_size is {batch_size}, but training needs batches of at least 2 images "
                "(BatchNorm in the ASPP pooling branch sees one value per image). The reference uses 32."
            )
            raise ValueError(msg)
        hp = self.hparams
        self.anomaly_generator = SyntheticAnomalyGenerator(
            texture_dir=hp.texture_dir, probability=hp.anomaly_probability, beta_range=tuple(hp.beta_range)
        )
        category = getattr(datamodule, "category", None)
        self.rotation_policy = resolve_rotation(hp.rotation, category)
        logger.info(
            "%s: %d student steps then %d segmentation steps; rotation policy %r (category %s).",
            self.name,
            hp.student_steps,
            hp.segmentation_steps,
            self.rotation_policy,
            category,
        )

    def on_validation_start(self) -> None:
        """Never evaluate with a random teacher."""
        self._require_pretrained_teacher()

    def on_test_start(self) -> None:
        """Never evaluate with a random teacher."""
        self._require_pretrained_teacher()

    def on_predict_start(self) -> None:
        """Never predict with a random teacher."""
        self._require_pretrained_teacher()

    # --- steps ------------------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One optimiser step of the current stage on a freshly corrupted batch."""
        del args, kwargs
        images = batch.image
        if images.shape[0] < 2:
            # Only a dataset's last, incomplete batch can be this small (batch size 1 is refused at start):
            # skip it as the reference's drop_last would; it does not count as a step.
            logger.debug("Skipping a training batch of one image.")
            return None
        step = self.global_step
        stage = self.stage_at(step)
        self.model.set_stage(stage)
        clean = rotate_batch(images, self.rotation_policy)
        corrupted, masks = self.anomaly_generator(clean)
        student_optimizer, segmentation_optimizer = self.optimizers()
        if stage == STUDENT_STAGE:
            loss, optimizer = self._student_loss(clean, corrupted), student_optimizer
        else:
            loss, optimizer = self._segmentation_loss(corrupted, masks), segmentation_optimizer
        if not torch.isfinite(loss):
            msg = f"Non-finite {stage} loss ({loss.item()}) at step {step}: stopping."
            raise FloatingPointError(msg)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self.log(f"{stage}_loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        self.log("train_loss", loss.detach(), prog_bar=False, on_step=True, on_epoch=True)
        if step + 1 == self.hparams.student_steps:
            logger.info("Stage 1 (student) finished at step %d; training the segmentation network.", step + 1)
        if step + 1 >= self.total_steps:
            # Stop here so that the final validation (thresholds) sees the model after its last step.
            self.trainer.should_stop = True
        return {"loss": loss.detach()}

    def _student_loss(self, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        model = self.model
        student_input = model.normalize(corrupted if self.hparams.denoising else clean)
        teacher_of_input = model.teacher(student_input) if model.student_reads_teacher else None
        student = model.student_features(student_input, teacher_of_input)
        with torch.no_grad():
            target = model.teacher(model.normalize(clean))
        return self.student_loss(student, target)

    def _segmentation_loss(self, corrupted: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher, student = self.model.encode(corrupted)
        prediction = self.model.segmentation_network(self.model.segmentation_features(teacher, student))
        return self.segmentation_loss(prediction, masks)

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict scores and maps for the validation batch (used for thresholds)."""
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())


def _check_arguments(
    student_steps: int,
    segmentation_steps: int,
    learning_rates: dict[str, float],
    momentum: float,
    weight_decay: float,
    anomaly_probability: float,
    beta_range: tuple[float, float],
) -> None:
    """Raise ``ValueError`` naming the first bad constructor argument."""
    for name, value in (("student_steps", student_steps), ("segmentation_steps", segmentation_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            msg = f"{name} must be a non-negative integer, got {value!r}."
            raise ValueError(msg)
    if student_steps + segmentation_steps == 0:
        msg = "student_steps + segmentation_steps must be at least 1."
        raise ValueError(msg)
    for name, value in learning_rates.items():
        if not value > 0:
            msg = f"{name} must be > 0, got {value!r}."
            raise ValueError(msg)
    if not 0 <= momentum < 1 or weight_decay < 0:
        msg = f"momentum must be in [0, 1) and weight_decay >= 0, got {momentum!r} and {weight_decay!r}."
        raise ValueError(msg)
    if not 0 <= anomaly_probability <= 1:
        msg = f"anomaly_probability must be in [0, 1], got {anomaly_probability!r}."
        raise ValueError(msg)
    if len(beta_range) != 2 or not 0 <= beta_range[0] <= beta_range[1] <= 1:
        msg = f"beta_range must be (low, high) with 0 <= low <= high <= 1, got {beta_range!r}."
        raise ValueError(msg)
