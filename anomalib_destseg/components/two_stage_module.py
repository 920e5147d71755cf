"""The two-stage training loop shared by DeSTSeg and PFADSeg, as an anomalib ``AnomalibModule``.

Stage 1 (``student_steps`` optimiser steps) trains the student with the cosine loss; stage 2
(``segmentation_steps``) freezes the student in eval mode and trains the segmentation network with focal + L1 loss.
Both stages use SGD (momentum 0.9, weight decay 1e-4) with the reference learning rates, by manual optimisation.
The stage follows from the optimiser step counter, so it survives checkpoint resumption.

Synthetic anomalies are made inside ``training_step`` on the pre-processed (resized, un-normalised) images; the
torch model normalises internally, so an exported model takes ``[0, 1]`` images like the training pipeline.

Robustness:

- Resuming (``Engine.fit(..., ckpt_path=...)``, ``anomalib fit ... --ckpt_path``): Lightning restores the weights,
  both optimisers' states (momentum) and the loop counters; ``global_step`` counts optimiser steps, so the stage
  and the end of the run follow. Checkpoints also hold the anomaly random stream
  (:class:`~anomalib_destseg.components.anomaly_generator.RandomStream`) and torch's global CPU generator, which
  drives the data loader's shuffling; both are restored when fitting resumes. A run interrupted at the end of an
  epoch and resumed on CPU then ends with exactly the weights of an uninterrupted run. Interrupted mid-epoch, the
  anomalies still continue exactly, but Lightning restarts the epoch's data loader (plain DataLoaders cannot resume),
  so the rest of that epoch sees a fresh shuffle and later epochs differ accordingly.
- A non-finite loss or gradient stops training with a ``FloatingPointError`` naming the step and stage, after the
  state from before that step (BatchNorm statistics included) is saved as ``last_good.ckpt`` in the checkpoint
  callback's folder (``<default_root_dir>/weights/lightning/`` with anomalib's Engine), ready for ``ckpt_path``.
- Before training (and testing), every dataset image and mask is checked; unreadable files (e.g. truncated, which
  PIL would report without a file name) are listed by name. See :mod:`anomalib_destseg.components.image_checks`.
"""

import logging
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch.nn.parallel import DistributedDataParallel
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_destseg.destseg.loss import SegmentationLoss, StudentCosineLoss

from .anomaly_generator import RandomStream, SyntheticAnomalyGenerator
from .export import ExportChecksMixin
from .image_checks import check_dataset_images
from .resize import AntialiasedPreProcessor
from .rotation import check_rotation, resolve_rotation, rotate_batch
from .student_teacher import SIZE_MULTIPLE, SegmentationGuidedStudentTeacher
from .teacher import IMAGENET, TeacherWeightsError

logger = logging.getLogger(__name__)

STUDENT_STAGE = "student"
SEGMENTATION_STAGE = "segmentation"
RANDOM_STATE_KEY = "two_stage_random_state"
"""Checkpoint key of the anomaly stream's state and torch's global CPU generator state."""
LAST_GOOD_CHECKPOINT = "last_good.ckpt"


class TwoStageSegmentationModule(ExportChecksMixin, AnomalibModule):
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
        # Optimiser steps completed (persistent): exporting before all planned steps warns (see .export).
        self.register_step_counter()
        self.student_loss = StudentCosineLoss()
        self.segmentation_loss = SegmentationLoss(focal_gamma=focal_gamma)
        # Created when training starts, so that loading a checkpoint on another machine needs no texture folder.
        self.anomaly_generator: SyntheticAnomalyGenerator | None = None
        self.rotation_policy = "none"
        self.full_batch_size = 2
        self._progress_clock: tuple[float, int] | None = None
        self._progress_stage: str | None = None
        self._last_step_end: float | None = None
        # Random stream of the synthetic anomalies and rotations (created or restored when training starts).
        self.anomaly_stream: RandomStream | None = None
        self._stream_state_to_resume: dict[str, Any] | None = None
        self._stream_state_to_save: dict[str, Any] | None = None
        self._teacher_error: Exception | None = None

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

        The resize is bilinear with antialiasing, as the reference's PIL resize, and exported models compute the same
        resize (:class:`~anomalib_destseg.components.resize.AntialiasedPreProcessor`), so an export given full-size
        images matches the Lightning model. Ground-truth masks are resized as the reference's evaluation does.

        Raises:
            ValueError: If a side of ``image_size`` is not a multiple of 32.

        """
        image_size = tuple(image_size or (256, 256))
        if len(image_size) != 2 or any(side <= 0 or side % SIZE_MULTIPLE for side in image_size):
            msg = f"image_size must be two positive multiples of {SIZE_MULTIPLE}, got {image_size}."
            raise ValueError(msg)
        return AntialiasedPreProcessor(transform=Compose([Resize(image_size, antialias=True)]))

    @staticmethod
    def configure_post_processor() -> PostProcessor:
        """Anomalib's post-processor (normalisation, thresholds) that also keeps the raw scores for the metrics."""
        from anomalib_destseg.metrics import RawScorePostProcessor

        return RawScorePostProcessor()

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Anomalib's default test metrics plus pixel AP, AUPRO (FPR limit 0.3), IAP and IAP@90, on raw scores."""
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
        """Load the teacher's ImageNet weights; a checkpoint restored afterwards replaces them.

        Lightning restores ``ckpt_path`` only after ``setup`` (``trainer.ckpt_path`` is not even set yet here), so a
        failure to load is kept and raised when fitting, validation, testing or prediction starts, and only if no
        checkpoint has provided the weights by then: resuming needs neither the weights file nor the network.
        """
        del stage
        self._teacher_error = None
        if not bool(self.model.teacher.pretrained):
            try:
                self.model.teacher.load_weights(self.hparams.teacher_weights)
            except (OSError, TeacherWeightsError) as error:  # FileNotFoundError is an OSError
                self._teacher_error = error

    def _require_pretrained_teacher(self) -> None:
        if not bool(self.model.teacher.pretrained):
            error, self._teacher_error = getattr(self, "_teacher_error", None), None
            if error is not None:
                raise error
            msg = "The teacher has no ImageNet weights loaded; refusing to run with a random teacher."
            raise RuntimeError(msg)

    def on_train_start(self) -> None:
        """Check the set-up and create the anomaly generator and rotation policy."""
        self._require_pretrained_teacher()
        if self.pre_processor and extract_transforms_by_type(self.pre_processor.transform, Normalize):
            msg = f"{self.name} normalises inside the model: remove Normalize from the pre-processor transform."
            raise ValueError(msg)
        datamodule = getattr(self.trainer, "datamodule", None)
        self.full_batch_size = _check_training_data(datamodule, processes=self.trainer.world_size)
        check_dataset_images(
            {"training": getattr(datamodule, "train_data", None), "validation": getattr(datamodule, "val_data", None)},
            self._image_size(),
        )
        self._progress_clock = (time.perf_counter(), self.global_step)
        self._progress_stage, self._last_step_end = None, None
        if self.trainer.world_size > 1:
            # One seed-derived random stream per process: DDP processes share the seed, and would otherwise draw the
            # same anomalies and rotations. Single-process runs are left untouched.
            torch.manual_seed((torch.initial_seed() + self.trainer.global_rank) % 2**64)
        resumed_stream, self._stream_state_to_resume = self._stream_state_to_resume, None
        if resumed_stream is not None and self.trainer.world_size == 1:
            self.anomaly_stream = RandomStream.from_state_dict(resumed_stream)
        else:
            # A fresh run (offset 0), or a resumed DDP run: the checkpoint holds rank 0's stream only, so every rank
            # starts a stream of its own, moved on by the step so that it does not repeat the first steps' anomalies.
            self.anomaly_stream = RandomStream.from_torch_seed(offset=self.global_step)
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
        """Never evaluate with a random teacher; name unreadable test images before the loader trips over them."""
        self._require_pretrained_teacher()
        check_dataset_images({"test": getattr(getattr(self.trainer, "datamodule", None), "test_data", None)})
        self._share_image_folder()

    def _image_size(self) -> tuple[int, int] | None:
        resize = extract_transforms_by_type(self.pre_processor.transform, Resize) if self.pre_processor else []
        size = resize[0].size if resize else None
        return tuple(size) if size is not None and len(size) == 2 else None

    # --- checkpoints ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the anomaly stream's state and torch's global CPU generator state (data order) to the checkpoint."""
        super().on_save_checkpoint(checkpoint)
        stream = self._stream_state_to_save or (self.anomaly_stream.state_dict() if self.anomaly_stream else None)
        if stream is not None:
            checkpoint[RANDOM_STATE_KEY] = {"anomaly_stream": stream, "global_cpu": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """When fitting resumes, restore the random states saved by :meth:`on_save_checkpoint`.

        The global generator is restored here, before the data loader draws its shuffling seed; the anomaly stream
        when training starts. Loading a checkpoint for testing, prediction or ``load_from_checkpoint`` changes no
        random state.
        """
        super().on_load_checkpoint(checkpoint)
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit" or trainer.ckpt_path is None:
            return
        saved = checkpoint.get("hyper_parameters", {})
        for name in ("student_steps", "segmentation_steps"):
            if name in saved and saved[name] != self.hparams[name]:
                logger.warning(
                    "Resuming with %s=%s, but the checkpoint was trained with %s=%s: the schedule follows the new "
                    "value (stage 1 is steps 0..student_steps-1).",
                    name,
                    self.hparams[name],
                    name,
                    saved[name],
                )
        state = checkpoint.get(RANDOM_STATE_KEY)
        if state is None:
            logger.info("The checkpoint holds no random state (older version): anomalies start a new stream.")
            return
        torch.set_rng_state(state["global_cpu"])
        self._stream_state_to_resume = state["anomaly_stream"]

    def on_predict_start(self) -> None:
        """Never predict with a random teacher."""
        self._require_pretrained_teacher()
        self._share_image_folder()

    def _share_image_folder(self) -> None:
        """Under several processes, have the visualizer save every process's images in rank 0's results folder.

        Lightning's ``ddp`` launcher runs the user's script (or CLI command) once per process, and anomalib's Engine
        makes a versioned results folder in each; rank 0's is the one that holds the checkpoint (only rank 0 saves).
        """
        if self.trainer.world_size < 2:
            return
        folder = self.trainer.strategy.broadcast(Path(self.trainer.default_root_dir) / "images")
        if self.visualizer is not None and getattr(self.visualizer, "output_dir", "") is None:
            self.visualizer.output_dir = folder

    # --- steps ------------------------------------------------------------------------------------------------
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
        stage = self.stage_at(step)
        self.model.set_stage(stage)
        if self.anomaly_stream is None:  # training_step called outside Trainer.fit
            self.anomaly_stream = RandomStream.from_torch_seed()
        stream_before = self.anomaly_stream.state_dict()
        with self.anomaly_stream.active(images.device):
            clean = rotate_batch(images, self.rotation_policy)
            corrupted, masks = self.anomaly_generator(clean)
        student_optimizer, segmentation_optimizer = self.optimizers()
        trained = self.model.student_modules if stage == STUDENT_STAGE else self.model.segmentation_modules
        # BatchNorm statistics change in the forward pass: keep them to undo a step that goes wrong.
        buffers_before = [buffer.clone() for module in trained for buffer in module.buffers()]
        if stage == STUDENT_STAGE:
            loss, optimizer = self._student_loss(clean, corrupted), student_optimizer
        else:
            loss, optimizer = self._segmentation_loss(corrupted, masks), segmentation_optimizer
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(self._with_idle_parameters(loss, optimizer))
        gradients = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        gradient_norm = torch.nn.utils.get_total_norm(gradients) if gradients else loss.new_zeros(())
        if not bool(torch.isfinite(loss) & torch.isfinite(gradient_norm)):  # one device synchronisation
            with torch.no_grad():
                for buffer, value in zip((b for m in trained for b in m.buffers()), buffers_before, strict=True):
                    buffer.copy_(value)
            self._stop_on_non_finite(step, stage, loss, gradient_norm, stream_before)
        optimizer.step()
        self.completed_steps.fill_(step + 1)
        batch_size = images.shape[0]
        self.log(f"{stage}_loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=True, batch_size=batch_size)
        self._report_progress(step + 1, stage, loss)
        if step + 1 in {self.hparams.student_steps, self.total_steps}:
            self._broadcast_buffers()
        if step + 1 == self.hparams.student_steps:
            logger.info("Stage 1 (student) finished at step %d; training the segmentation network.", step + 1)
        if step + 1 >= self.total_steps:
            # Stop here so that the final validation (thresholds) sees the model after its last step.
            self.trainer.should_stop = True
        return {"loss": loss.detach()}

    def _stop_on_non_finite(
        self, step: int, stage: str, loss: torch.Tensor, gradient_norm: torch.Tensor, stream: dict[str, Any]
    ) -> None:
        """Save the state from before optimiser step ``step`` as ``last_good.ckpt``, then raise.

        Raises:
            FloatingPointError: Naming the step, the stage and the checkpoint.

        """
        what = f"loss ({loss.item()})" if not torch.isfinite(loss) else f"gradient norm ({gradient_norm.item()})"
        number = 1 if stage == STUDENT_STAGE else 2
        where = f"non-finite {what} at optimiser step {step} of {self.total_steps} (stage {number}, {stage})"
        try:
            saved = self._save_last_good(stream)
        except Exception as error:  # report the original problem, with why nothing was saved
            saved = f"could not be saved ({type(error).__name__}: {error})"
        msg = f"Training stopped: {where}. The state from before this step {saved}."
        raise FloatingPointError(msg)

    def _save_last_good(self, stream: dict[str, Any]) -> str:
        """Write ``last_good.ckpt`` (weights, optimisers, loops, random states as they were before the failed step)."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        if not all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
            return "was not saved: the weights themselves are already non-finite (use an earlier checkpoint)"
        callback = self.trainer.checkpoint_callback
        directory = getattr(callback, "dirpath", None) or Path(self.trainer.default_root_dir) / "weights" / "lightning"
        path = Path(directory) / LAST_GOOD_CHECKPOINT
        self._stream_state_to_save = stream
        try:
            self.trainer.save_checkpoint(path)
        finally:
            self._stream_state_to_save = None
        return f"is saved in {path} (inspect it, or resume from it with ckpt_path once the cause is fixed)"

    def _report_progress(self, done: int, stage: str, loss: torch.Tensor) -> None:
        """Log about twenty progress lines per run: the progress bar is invisible in non-interactive logs.

        The rate is that of the current stage only (a segmentation step costs several student steps), so the time
        left is given for the current stage.
        """
        now = time.perf_counter()
        clock = self._progress_clock or (now, done - 1)
        if self._progress_stage != stage:  # a new stage: time it from its first step
            self._progress_stage, clock = stage, (self._last_step_end or clock[0], done - 1)
            self._progress_clock = clock
        self._last_step_end = now
        interval = max(1, self.total_steps // 20)
        if done % interval and done != self.total_steps:
            return
        started, first_step = clock
        per_step = (now - started) / max(done - first_step, 1)
        stage_end = self.hparams.student_steps if stage == STUDENT_STAGE else self.total_steps
        logger.info(
            "step %d/%d (%s stage): loss %.4f, %.2f s/step, about %.0f s left in this stage",
            done,
            self.total_steps,
            stage,
            loss.item(),
            per_step,
            per_step * (stage_end - done),
        )

    def _with_idle_parameters(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """Under DDP, add zero times the trainable parameters that ``optimizer`` does not train.

        DDP (unless ``find_unused_parameters=True``) expects a gradient for every trainable parameter in each step, but
        the segmentation network idles in stage 1 and the student in stage 2. The zero-weighted term gives them zero
        gradients (their optimiser does not step), so both stages synchronise whatever the user's DDP settings.
        Outside DDP ``loss`` is returned unchanged.
        """
        if self._trainer is None or not isinstance(self.trainer.strategy.model, DistributedDataParallel):
            return loss
        active = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
        idle = [p for p in self.parameters() if p.requires_grad and id(p) not in active]
        if not idle:
            return loss
        return loss + 0.0 * sum(p.sum() for p in idle)

    def _broadcast_buffers(self) -> None:
        """Under DDP, give every process rank 0's buffers (BatchNorm statistics), as DDP does before each forward.

        Each process updates the statistics with its own batch, and DDP copies rank 0's to the others only when the
        next training forward starts. After the last step there is none: validation (which sets the thresholds)
        would run with different statistics in each process. Called at the end of both stages.
        """
        if self.trainer.world_size < 2 or not torch.distributed.is_initialized():
            return
        for buffer in self.model.buffers():
            torch.distributed.broadcast(buffer, src=0)

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


def _check_training_data(datamodule: object, processes: int = 1) -> int:
    """Return the training batch size after checking that full batches of at least two images exist.

    Under DDP each of the ``processes`` gets its own share of the training set (Lightning's distributed sampler).

    Raises:
        ValueError: For batch size 1 (BatchNorm in the ASPP pooling branch sees one value per image) or a training
            set smaller than one batch (incomplete batches are skipped, so training would never advance).

    """
    batch_size = getattr(datamodule, "train_batch_size", None)
    if batch_size is None:
        return 2
    if batch_size < 2:
        msg = (
            f"train_batch_size is {batch_size}, but training needs batches of at least 2 images "
            "(BatchNorm in the ASPP pooling branch sees one value per image). The reference uses 32."
        )
        raise ValueError(msg)
    train_data = getattr(datamodule, "train_data", None)
    size = len(train_data) if train_data is not None else None
    share = -(-size // processes) if size is not None else None  # images per process, rounded up like the sampler
    if share is not None and share < batch_size:
        what = "is empty" if size == 0 else f"has {size} images, fewer than train_batch_size={batch_size}"
        if size and processes > 1:
            what = f"gives each of {processes} processes {share} images, fewer than train_batch_size={batch_size}"
        msg = f"The training set {what}; incomplete batches are dropped as in the reference, so nothing would train."
        raise ValueError(msg)
    return batch_size


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
