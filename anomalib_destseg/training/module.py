"""The two-stage training of DeSTSeg and PFADSeg: their arguments, schedule, optimisers and steps.

Stage 1 (``student_steps`` optimiser steps) trains the student with the cosine loss; stage 2
(``segmentation_steps``) freezes the student in eval mode and trains the segmentation network with focal + L1 loss.
Both use SGD with the reference settings, by manual optimisation; the stage follows from the optimiser step count,
so it survives checkpoint resumption. Synthetic anomalies are made in ``training_step`` on the pre-processed
(resized, un-normalised) images; the torch model normalises internally, so exports take ``[0, 1]`` images.

What is not the recipe lives beside it: loading and requiring the teacher's weights, data checks, the anomaly
random stream (and its checkpointing), progress lines and the non-finite guard are callbacks (:mod:`.callbacks`,
returned by ``configure_callbacks``); DDP details are in :mod:`.distributed`, export checks in
:mod:`anomalib_destseg.export`.
"""

import logging
from pathlib import Path
from typing import Any, Literal

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import Resize

from anomalib_destseg.components.loss import SegmentationLoss, StudentCosineLoss
from anomalib_destseg.components.maps import SEGMENTATION_MAP, check_map_name, map_fields, other_map
from anomalib_destseg.components.stage import Stage
from anomalib_destseg.components.teacher import IMAGENET
from anomalib_destseg.components.tiling import (
    TILER_CHECKPOINT_KEY,
    fill_default_stride,
    tiler_from_settings,
    tiler_settings,
)
from anomalib_destseg.data.anomaly_generator import SyntheticAnomalyGenerator
from anomalib_destseg.data.resize import default_pre_processor
from anomalib_destseg.data.rotation import check_rotation, resolve_rotation, rotate_batch
from anomalib_destseg.export import ExportChecksMixin, ModelApiMetadataMixin

from . import distributed
from .callbacks import (
    AnomalyStream,
    DataChecks,
    NonFiniteGuard,
    PeriodicCheckpoint,
    SafeCheckpointFiles,
    TeacherWeights,
    TilingChecks,
    TrainingProgress,
    callbacks_to_attach,
    usable_batch_size,
)
from .random_stream import RandomStream

logger = logging.getLogger(__name__)

NEVER = 2**62
"""A validation interval in batches that no run reaches: the models validate when training stops."""


class TwoStageTraining(ExportChecksMixin, ModelApiMetadataMixin):
    """DeSTSeg's training recipe for an ``AnomalibModule``: ``class Model(TwoStageTraining, AnomalibModule)``.

    The model class builds ``self.model`` (a :class:`~anomalib_destseg.components.SegmentationGuidedStudentTeacher`,
    which validates ``top_k``) after calling this ``__init__``. Every default is the reference recipe (5000 steps at
    batch 32; set the batch size on the datamodule).

    Args:
        student_steps: Optimiser steps of stage 1 (student). Their sum with ``segmentation_steps`` sets the
            trainer's ``max_steps`` (a model argument: anomalib's ``trainer_arguments`` override the trainer's).
        segmentation_steps: Optimiser steps of stage 2 (segmentation network).
        student_lr: SGD learning rate of the student (for batch 32: the student loss is a batch sum).
        residual_lr: SGD learning rate of the segmentation network's residual blocks (and of what feeds them).
        head_lr: SGD learning rate of ASPP and the head.
        momentum: SGD momentum of both stages.
        weight_decay: SGD weight decay of both stages.
        top_k: Image score = mean of the ``top_k`` largest anomaly-map values.
        output_map: The anomaly map the model outputs (``anomaly_map``, ``pred_score``, and so thresholds, pictures
            and exports): ``"segmentation"`` (the segmentation network's, the paper's DeSTSeg results) or ``"dest"``
            (the teacher-student cosine-distance map, the paper's DeST results; PFADSeg's is inferred).
        second_map: In test and predict runs, also compute the other map: it travels in the batch as
            ``<name>_anomaly_map`` / ``<name>_pred_score`` (raw) and the default evaluator reports its image AUROC,
            pixel AUROC, pixel AP, AUPRO, IAP and IAP@90 with the prefix ``DeST_`` (or ``Seg_``).
        focal_gamma: Focal loss gamma.
        anomaly_probability: Chance that a training image is corrupted (the reference corrupts every image).
        beta_range: Range of the blend factor beta; the texture's weight inside the mask is ``1 - beta``.
        texture_dir: Folder of texture images for synthetic anomalies (the reference uses DTD). ``None`` uses a
            procedural texture (a deviation, logged).
        rotation: Rotation of clean training images: ``"auto"`` (MVTec AD category policy, none for other data),
            ``"none"``, ``"small"`` (+-5 degrees) or ``"quarter"`` (multiple of 90, then +-5 degrees).
        denoising: The student sees corrupted images (True, reference) or clean ones (False, the paper's ablation).
        teacher_weights: ``"imagenet"`` (torchvision's cached or downloaded IMAGENET1K_V1) or a path to a local
            ResNet-18 state dict (``.pth`` read with ``weights_only=True``, or ``.safetensors``).
        checkpoint_every_n_steps: Write ``resume.ckpt`` (next to anomalib's checkpoint) at least every this many
            optimiser steps; 0 turns the step trigger off. It is also written at the end of stage 1 and on SIGTERM.
        checkpoint_every_seconds: Also write ``resume.ckpt`` at least every this many seconds of training (saves
            are made at epoch ends where epochs are shorter than the interval, so that resuming is exact); 0 turns
            the time trigger off. With both triggers off no ``resume.ckpt`` is written at all.
        pre_processor: Pre-processor or flag; the default resizes to 256x256 with antialiasing, without normalising.
        post_processor: Post-processor or flag; the default is anomalib's, keeping raw scores for the metrics.
        evaluator: Evaluator or flag; the default adds pixel AP, AUPRO, IAP and IAP@90 on raw scores.
        visualizer: Visualizer or flag.

    Raises:
        ValueError: Naming the first bad argument.

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
        output_map: Literal["segmentation", "dest"] = "segmentation",
        second_map: bool = True,
        focal_gamma: float = 4.0,
        anomaly_probability: float = 1.0,
        beta_range: tuple[float, float] = (0.0, 0.8),
        texture_dir: str | Path | None = None,
        rotation: Literal["auto", "none", "small", "quarter"] = "auto",
        denoising: bool = True,
        teacher_weights: str | Path = IMAGENET,
        checkpoint_every_n_steps: int = 250,
        checkpoint_every_seconds: float = 300.0,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        _check_schedule(student_steps, segmentation_steps)
        _check_optimiser(
            {"student_lr": student_lr, "residual_lr": residual_lr, "head_lr": head_lr}, momentum, weight_decay
        )
        check_rotation(rotation)
        check_map_name(output_map)
        _check_checkpoint_interval(checkpoint_every_n_steps, checkpoint_every_seconds)
        super().__init__(
            pre_processor=pre_processor, post_processor=post_processor, evaluator=evaluator, visualizer=visualizer
        )
        self.automatic_optimization = False
        self.register_step_counter()  # completed optimiser steps: exporting before all planned steps warns
        self.student_loss = StudentCosineLoss()
        self.segmentation_loss = SegmentationLoss(focal_gamma=focal_gamma)
        self.anomaly_generator = SyntheticAnomalyGenerator(texture_dir, anomaly_probability, tuple(beta_range))
        self.anomaly_stream: RandomStream | None = None  # created (or restored) when training starts
        self.rotation_policy = "none"
        self.full_batch_size = 2
        self.step_loss: torch.Tensor | None = None  # the current step's loss, for the non-finite guard

    # --- schedule -----------------------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        """Optimiser steps of both stages."""
        return self.hparams.student_steps + self.hparams.segmentation_steps

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Steps decide the schedule; validation runs once, after the last step (it sets the thresholds).

        ``training_step`` asks Lightning to stop after the last step, and Lightning validates when it stops. No batch
        count triggers validation: Lightning counts batches, not optimiser steps, and skipped incomplete batches
        would bring a count-based validation forward to before the last step.
        """
        return {
            "max_steps": self.total_steps,
            "max_epochs": -1,
            "num_sanity_val_steps": 0,
            "check_val_every_n_epoch": None,
            "val_check_interval": NEVER,
        }

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS

    # --- components ---------------------------------------------------------------------------------------------
    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize with antialiasing (default 256x256), no normalisation: see :func:`default_pre_processor`."""
        return default_pre_processor(image_size)

    @staticmethod
    def configure_post_processor() -> PostProcessor:
        """Anomalib's post-processor (normalisation, thresholds) that also keeps the raw scores for the metrics."""
        from anomalib_destseg.metrics import RawScorePostProcessor

        return RawScorePostProcessor()

    def configure_evaluator(self) -> Evaluator:
        """Anomalib's default test metrics plus pixel AP, AUPRO (FPR limit 0.3), IAP and IAP@90, on raw scores.

        With ``second_map`` (the default) also the paper's metrics of the map that is not the output, prefixed.
        """
        from anomalib_destseg.metrics import paper_evaluator

        hp = self.hparams
        return paper_evaluator(second_map=other_map(hp.output_map) if hp.second_map else None)

    def configure_callbacks(self) -> list[Callback]:
        """Anomalib's components, then teacher weights, data checks, anomaly stream, progress, guard, checkpoints.

        Only those not attached to the trainer yet (:func:`~.callbacks.callbacks_to_attach`): a test or predict after
        a fit in the same Engine keeps the fit's, instead of replacing them (which Lightning would report).
        """
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            fill_default_stride(trainer.callbacks)  # before anomalib's TilerConfigurationCallback builds its tiler
        return callbacks_to_attach(self, super().configure_callbacks(), self._own_callbacks)

    def _own_callbacks(self) -> list[Callback]:
        callbacks = [TeacherWeights(), DataChecks(), TilingChecks(), AnomalyStream(), TrainingProgress()]
        callbacks += [NonFiniteGuard(), SafeCheckpointFiles()]
        steps, seconds = self.hparams.checkpoint_every_n_steps, self.hparams.checkpoint_every_seconds
        if steps or seconds:
            callbacks.append(PeriodicCheckpoint(every_n_steps=steps, every_seconds=seconds))
        return callbacks

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The size the pre-processor resizes images to (``None`` without a resizing pre-processor)."""
        resize = extract_transforms_by_type(self.pre_processor.transform, Resize) if self.pre_processor else []
        size = resize[0].size if resize else None
        return tuple(size) if size is not None and len(size) == 2 else None

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """SGD for the student (stage 1) and SGD with two parameter groups for the segmentation network (stage 2)."""
        hp = self.hparams
        student = [p for module in self.model.student_modules for p in module.parameters()]
        fast, slow = self.model.segmentation_parameter_groups()
        return (
            torch.optim.SGD(student, lr=hp.student_lr, momentum=hp.momentum, weight_decay=hp.weight_decay),
            torch.optim.SGD(
                [{"params": fast, "lr": hp.residual_lr}, {"params": slow, "lr": hp.head_lr}],
                lr=hp.residual_lr,
                momentum=hp.momentum,
                weight_decay=hp.weight_decay,
            ),
        )

    def on_test_start(self) -> None:
        """Under DDP, write every process's result images to one folder."""
        distributed.share_image_folder(self)

    def on_predict_start(self) -> None:
        """Under DDP, write every process's result images to one folder."""
        distributed.share_image_folder(self)

    # --- training -----------------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        """Settle the batch size, read the textures and resolve the rotation policy for the dataset's category."""
        datamodule = getattr(self.trainer, "datamodule", None)
        self.full_batch_size = usable_batch_size(datamodule, processes=self.trainer.world_size)
        self.anomaly_generator.load_textures()
        category = getattr(datamodule, "category", None)
        self.rotation_policy = resolve_rotation(self.hparams.rotation, category)
        logger.info(
            "%s: %d student steps then %d segmentation steps; rotation policy %r (category %s).",
            self.name,
            self.hparams.student_steps,
            self.hparams.segmentation_steps,
            self.rotation_policy,
            category,
        )

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One optimiser step of the current stage on a freshly corrupted batch."""
        del args, kwargs
        images = batch.image
        if images.shape[0] < max(self.full_batch_size, 2):
            # The reference drops incomplete batches (drop_last); anomalib's loaders keep them, so skip them here.
            # A skipped batch is not an optimiser step and does not count towards the schedule.
            logger.debug("Skipping an incomplete training batch of %d images.", images.shape[0])
            return None
        step = self.global_step
        stage = Stage.at(step, self.hparams.student_steps)
        self.model.set_stage(stage)
        if self.anomaly_stream is None:  # training_step called outside Trainer.fit
            self.anomaly_stream = RandomStream.from_torch_seed()
        # Anomalies in float32 under mixed precision too: the masks threshold Perlin noise, which lower precision
        # would move. (A no-op in float32.)
        autocast_off = torch.autocast(images.device.type, enabled=False)
        with self.anomaly_stream.active(images.device), autocast_off:
            # with anomalib's tiler every tile of the (rotated) clean images is a training sample
            clean = self.model.tile(rotate_batch(images, self.rotation_policy))
            corrupted, masks = self.anomaly_generator(clean)
        student_optimizer, segmentation_optimizer = self.optimizers()
        if stage is Stage.STUDENT:
            optimizer = student_optimizer
            loss = self.student_loss(*self.model.student_pass(corrupted if self.hparams.denoising else clean, clean))
        else:
            optimizer = segmentation_optimizer
            loss = self.segmentation_loss(self.model.segmentation_pass(corrupted), masks)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(distributed.with_idle_parameters(self, loss, optimizer))
        self.step_loss = loss.detach()
        optimizer.step()  # the NonFiniteGuard callback checks the loss and gradients first
        self.completed_steps.fill_(step + 1)
        batch_size = images.shape[0]
        self.log(f"{stage.value}_loss", self.step_loss, prog_bar=True, on_epoch=False, batch_size=batch_size)
        self.log("train_loss", self.step_loss, on_step=True, on_epoch=True, batch_size=batch_size)
        if step + 1 in {self.hparams.student_steps, self.total_steps}:
            distributed.broadcast_buffers(self)
        if step + 1 >= self.total_steps:
            self.trainer.should_stop = True  # the final validation (thresholds) sees the model after its last step
        return {"loss": self.step_loss}

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict scores and maps for the validation batch (used for thresholds)."""
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())

    # --- the two anomaly maps -----------------------------------------------------------------------------------
    def test_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """The output map as ``anomaly_map`` / ``pred_score``; with ``second_map`` the other one beside it."""
        del args, kwargs
        return self._predict_maps(batch)

    def predict_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """As :meth:`test_step`: the output map, and with ``second_map`` the other one beside it."""
        del args, kwargs
        return self._predict_maps(batch)

    def _predict_maps(self, batch: Batch) -> Batch:
        output = self.model.output_map
        if not self.hparams.second_map:
            return batch.update(**self.model(batch.image)._asdict())
        second = other_map(output)
        predictions = self.model.predict_maps(batch.image, (output, second))
        batch.update(**predictions[output]._asdict())
        # anomalib's batch fields are fixed: the second map is an attribute, shaped as the batch shapes anomaly_map
        score_field, map_field = map_fields(second)
        setattr(batch, score_field, predictions[second].pred_score)
        setattr(batch, map_field, predictions[second].anomaly_map.reshape(batch.anomaly_map.shape))
        return batch

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the tiler's settings (plain data) with a tiled model, so that it is loaded and exported tiled."""
        super().on_save_checkpoint(checkpoint)
        if self.model.tiler is not None:
            checkpoint[TILER_CHECKPOINT_KEY] = tiler_settings(self.model.tiler)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore a tiled checkpoint's tiler (unless a callback set one) and check the thresholds' map.

        Warns when the checkpoint's thresholds were set on the other map (``output_map`` changed on loading).
        """
        super().on_load_checkpoint(checkpoint)
        settings = checkpoint.get(TILER_CHECKPOINT_KEY)
        if settings is not None and self.model.tiler is None:
            self.model.tiler = tiler_from_settings(settings)
            logger.info("%s: tiling as the checkpoint was trained: %s.", self.name, settings)
        saved = (checkpoint.get("hyper_parameters") or {}).get("output_map", SEGMENTATION_MAP)
        if saved != self.hparams.output_map and self.post_processor is not None:
            logger.warning(
                "%s: the checkpoint's thresholds and score normalisation were set on the %r map, but this model "
                "outputs the %r map. Run Engine.validate (as training does) before relying on its labels, masks or "
                "normalised scores; the metrics on raw scores are not affected.",
                self.name,
                saved,
                self.hparams.output_map,
            )


def _check_schedule(student_steps: int, segmentation_steps: int) -> None:
    for name, value in (("student_steps", student_steps), ("segmentation_steps", segmentation_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            msg = f"{name} must be a non-negative integer, got {value!r}."
            raise ValueError(msg)
    if student_steps + segmentation_steps == 0:
        msg = "student_steps + segmentation_steps must be at least 1."
        raise ValueError(msg)


def _check_optimiser(learning_rates: dict[str, float], momentum: float, weight_decay: float) -> None:
    for name, value in learning_rates.items():
        if not value > 0:
            msg = f"{name} must be > 0, got {value!r}."
            raise ValueError(msg)
    if not 0 <= momentum < 1 or weight_decay < 0:
        msg = f"momentum must be in [0, 1) and weight_decay >= 0, got {momentum!r} and {weight_decay!r}."
        raise ValueError(msg)


def _check_checkpoint_interval(every_n_steps: int, every_seconds: float) -> None:
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0:
        msg = f"checkpoint_every_n_steps must be a non-negative integer (0: off), got {every_n_steps!r}."
        raise ValueError(msg)
    if isinstance(every_seconds, bool) or not isinstance(every_seconds, int | float) or not every_seconds >= 0:
        msg = f"checkpoint_every_seconds must be a non-negative number (0: off), got {every_seconds!r}."
        raise ValueError(msg)
