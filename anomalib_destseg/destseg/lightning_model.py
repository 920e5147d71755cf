"""DeSTSeg as an anomalib model.

DeSTSeg (Zhang, Li, Li, Huang, Shan, Chen: "DeSTSeg: Segmentation Guided Denoising Student-Teacher for Anomaly
Detection", CVPR 2023) trains a denoising student to reproduce a frozen ImageNet teacher's features of clean images
from synthetically corrupted ones, then trains a segmentation network on the product of their normalised features
to find the synthetic defects.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_destseg import DeSTSeg
    >>> model = DeSTSeg(texture_dir="datasets/dtd/images")
    >>> engine = Engine()
    >>> engine.fit(model, datamodule=MVTecAD(category="bottle", train_batch_size=32))  # doctest: +SKIP

    From the command line::

        anomalib train --model anomalib_destseg.DeSTSeg --data anomalib.data.MVTecAD \
            --model.texture_dir datasets/dtd/images

"""

from pathlib import Path
from typing import Any, Literal

from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer

from anomalib_destseg.components.teacher import IMAGENET
from anomalib_destseg.components.two_stage_module import TwoStageSegmentationModule

from .reference_checkpoint import convert_state_dict, read_reference_checkpoint
from .torch_model import DeSTSegModel


class DeSTSeg(TwoStageSegmentationModule):
    """DeSTSeg: segmentation-guided denoising student-teacher anomaly detection.

    Every default is the reference recipe (5000 steps at batch 32; set the batch size on the datamodule).

    Args:
        student_steps: Optimiser steps of stage 1 (student). Default 1000.
        segmentation_steps: Optimiser steps of stage 2 (segmentation network). Default 4000. Their sum sets the
            trainer's ``max_steps`` (a model argument, because anomalib's ``trainer_arguments`` override the user's
            trainer settings).
        student_lr: SGD learning rate of the student. Default 0.4 (for batch 32: the student loss is a batch sum).
        residual_lr: SGD learning rate of the segmentation network's residual blocks. Default 0.1.
        head_lr: SGD learning rate of ASPP and the head. Default 0.01.
        momentum: SGD momentum of both stages. Default 0.9.
        weight_decay: SGD weight decay of both stages. Default 1e-4.
        top_k: Image score = mean of the top ``top_k`` anomaly-map values. Default 100.
        focal_gamma: Focal loss gamma. Default 4.
        anomaly_probability: Chance that a training image is corrupted. Default 1 (every image).
        beta_range: Range of the blend factor beta; the texture's weight is ``1 - beta``. Default ``(0, 0.8)``.
        texture_dir: Folder of texture images for synthetic anomalies (the reference uses DTD). ``None`` uses a
            procedural texture (a deviation, logged).
        rotation: Rotation of clean training images: ``"auto"`` (MVTec AD category defaults, none otherwise),
            ``"none"``, ``"small"`` (+-5 degrees) or ``"quarter"`` (multiple of 90 then +-5 degrees).
        denoising: The student sees corrupted images (True, reference) or clean ones (False, ablation).
        teacher_weights: ``"imagenet"`` (torchvision's cached/downloaded IMAGENET1K_V1) or a path to a local
            ResNet-18 state dict (``.pth`` read with ``weights_only=True``, or ``.safetensors``).
        pre_processor: Pre-processor or flag; the default resizes to 256x256 and does not normalise.
        post_processor: Post-processor or flag.
        evaluator: Evaluator or flag; the default adds pixel AP, AUPRO, IAP and IAP@90 to anomalib's defaults.
        visualizer: Visualizer or flag.

    Example:
        >>> model = DeSTSeg(student_steps=10, segmentation_steps=20)
        >>> model.trainer_arguments["max_steps"]
        30

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
        rotation: Literal["auto", "none", "small", "quarter"] = "auto",
        denoising: bool = True,
        teacher_weights: str | Path = IMAGENET,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            student_steps=student_steps,
            segmentation_steps=segmentation_steps,
            student_lr=student_lr,
            residual_lr=residual_lr,
            head_lr=head_lr,
            momentum=momentum,
            weight_decay=weight_decay,
            top_k=top_k,
            focal_gamma=focal_gamma,
            anomaly_probability=anomaly_probability,
            beta_range=beta_range,
            texture_dir=texture_dir,
            rotation=rotation,
            denoising=denoising,
            teacher_weights=teacher_weights,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )

    def build_model(self) -> DeSTSegModel:
        """DeSTSeg's torch model."""
        return DeSTSegModel(top_k=self.hparams.top_k)

    @classmethod
    def from_reference_checkpoint(cls, path: str | Path, **model_kwargs: Any) -> "DeSTSeg":
        """A DeSTSeg with the weights of one of the authors' released checkpoints, ready to test, predict, export.

        The reference code trains at 256x256 (the default pre-processor). The post-processor has no thresholds
        until validation: ``Engine.validate(model, datamodule=...)`` sets anomalib's adaptive thresholds and
        normalisation, as training does; without it, labels and masks threshold the raw probabilities at 0.5.

        Args:
            path: A reference ``.pckl`` file (``DeSTSeg_MVTec_5000_<category>.pckl``).
            **model_kwargs: Constructor arguments (e.g. ``pre_processor``, ``evaluator``).

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ReferenceCheckpointError: If the file is not a reference checkpoint (the message names the tensors).

        Example:
            >>> model = DeSTSeg.from_reference_checkpoint("DeSTSeg_MVTec_5000_bottle.pckl")  # doctest: +SKIP

        """
        model = cls(**model_kwargs)
        state = convert_state_dict(read_reference_checkpoint(path), model.model.state_dict())
        model.model.load_state_dict(state, strict=True)
        model.completed_steps.fill_(model.total_steps)  # fully trained: exports do not warn
        return model
