"""PFADSeg as an anomalib model (architecture inferred from the abstract; DeSTSeg's training recipe).

PFADSeg (Song, Chen, Hu, Wang, Hu, Wu: "Teacher Encoder-Student Decoder Denoising Guided Segmentation Network for
Anomaly Detection", arXiv 2501.12104) replaces DeSTSeg's encoder-decoder student with a decoder that reads the frozen
teacher's fused multi-scale features, and adds an adaptive feature fusion in front of the segmentation network. No
code or method section is public: the fusion operators, the form of the adaptive fusion, where the decoder's input
comes from (the teacher's raw features), loss weights and optimiser settings are INFERRED (DeSTSeg's are kept). See
``docs/pfadseg.md``.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_destseg import PFADSeg
    >>> model = PFADSeg(texture_dir="datasets/dtd/images")
    >>> engine = Engine()
    >>> engine.fit(model, datamodule=MVTecAD(category="bottle", train_batch_size=32))  # doctest: +SKIP

    From the command line::

        anomalib train --model anomalib_destseg.PFADSeg --data anomalib.data.MVTecAD \
            --model.texture_dir datasets/dtd/images --model.fusion concat

"""

from pathlib import Path
from typing import Literal

from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer

from anomalib_destseg.components.teacher import IMAGENET
from anomalib_destseg.components.two_stage_module import TwoStageSegmentationModule

from .torch_model import DECODER_INPUTS, FUSIONS, PFADSegModel, check_choice


class PFADSeg(TwoStageSegmentationModule):
    """PFADSeg: teacher-encoder / student-decoder denoising with adaptive fusion for the segmentation network.

    The architecture is inferred from the paper's abstract (arXiv 2501.12104); everything the abstract does not name
    (losses and their weights, two-stage schedule, SGD settings, synthetic anomalies, augmentation, scoring) is
    DeSTSeg's reference recipe. Every argument of :class:`anomalib_destseg.DeSTSeg` is accepted with the same name
    and default; two switches select the ablations.

    Args:
        student_steps: Optimiser steps of stage 1 (fusion bottleneck + decoder). Default 1000.
        segmentation_steps: Optimiser steps of stage 2 (adaptive fusion + segmentation network). Default 4000.
            Their sum sets the trainer's ``max_steps`` (a model argument, because anomalib's ``trainer_arguments``
            override the user's trainer settings).
        student_lr: SGD learning rate of the student (fusion bottleneck and decoder). Default 0.4 (DeSTSeg's, for
            batch 32: the student loss is a batch sum; inferred for PFADSeg).
        residual_lr: SGD learning rate of the adaptive fusion and the segmentation network's residual blocks.
            Default 0.1.
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
        denoising: The student (the teacher's features of its input, then the decoder) sees corrupted images
            (True, reference) or clean ones (False, ablation).
        teacher_weights: ``"imagenet"`` (torchvision's cached/downloaded IMAGENET1K_V1) or a path to a local
            ResNet-18 state dict (``.pth`` read with ``weights_only=True``, or ``.safetensors``).
        decoder_input: Where the student decoder's 512-channel 1/32 input comes from: ``"teacher"`` (default, the
            teacher's raw features fused by the multi-scale fusion bottleneck) or ``"student_encoder"`` (the
            student's own ResNet-18 encoder, as in DeSTSeg; no fusion bottleneck).
        fusion: Segmentation-network input: ``"adaptive"`` (default, per-pixel level weights; 576 channels) or
            ``"concat"`` (DeSTSeg's plain 448-channel concatenation). With ``decoder_input="student_encoder"`` and
            ``fusion="concat"`` the model is DeSTSeg.
        pre_processor: Pre-processor or flag; the default resizes to 256x256 and does not normalise.
        post_processor: Post-processor or flag.
        evaluator: Evaluator or flag; the default adds pixel AP, AUPRO, IAP and IAP@90 to anomalib's defaults.
        visualizer: Visualizer or flag.

    Raises:
        ValueError: If an argument is out of range, e.g. ``decoder_input`` or ``fusion`` is not one of its choices.

    Example:
        >>> model = PFADSeg(student_steps=10, segmentation_steps=20, fusion="concat")
        >>> model.trainer_arguments["max_steps"], model.model.segmentation_network.residual[0].conv1.in_channels
        (30, 448)

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
        decoder_input: Literal["teacher", "student_encoder"] = "teacher",
        fusion: Literal["adaptive", "concat"] = "adaptive",
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        check_choice("decoder_input", decoder_input, DECODER_INPUTS)
        check_choice("fusion", fusion, FUSIONS)
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

    def build_model(self) -> PFADSegModel:
        """PFADSeg's torch model with the selected switches."""
        hp = self.hparams
        return PFADSegModel(top_k=hp.top_k, decoder_input=hp.decoder_input, fusion=hp.fusion)
