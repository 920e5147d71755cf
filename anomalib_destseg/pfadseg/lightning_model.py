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

from typing import Any, Literal

from anomalib.models.components import AnomalibModule

from anomalib_destseg.training import TwoStageTraining

from .torch_model import PFADSegModel


class PFADSeg(TwoStageTraining, AnomalibModule):
    """PFADSeg: teacher-encoder / student-decoder denoising with adaptive fusion for the segmentation network.

    The architecture is inferred from the paper's abstract (arXiv 2501.12104); everything the abstract does not name
    (losses, two-stage schedule, SGD settings, synthetic anomalies, augmentation, scoring) is DeSTSeg's reference
    recipe, with DeSTSeg's arguments (:class:`~anomalib_destseg.training.TwoStageTraining`). In stage 1 the fusion
    bottleneck and decoder train at ``student_lr``; in stage 2 the adaptive fusion trains with the residual blocks
    at ``residual_lr``.

    Args:
        decoder_input: Where the student decoder's 512-channel 1/32 input comes from: ``"teacher"`` (default, the
            teacher's raw features fused by the multi-scale fusion bottleneck) or ``"student_encoder"`` (the
            student's own ResNet-18 encoder, as in DeSTSeg; no fusion bottleneck).
        fusion: Segmentation-network input: ``"adaptive"`` (default, per-pixel level weights; 576 channels) or
            ``"concat"`` (DeSTSeg's plain 448-channel concatenation). With ``decoder_input="student_encoder"`` and
            ``fusion="concat"`` the model is DeSTSeg.
        **kwargs: DeSTSeg's arguments (the two-stage recipe) and anomalib's components.

    Raises:
        ValueError: If an argument is out of range, e.g. ``decoder_input`` or ``fusion`` is not one of its choices.

    Example:
        >>> model = PFADSeg(student_steps=10, segmentation_steps=20, fusion="concat")
        >>> model.trainer_arguments["max_steps"], model.model.segmentation_network.residual[0].conv1.in_channels
        (30, 448)

    """

    def __init__(
        self,
        decoder_input: Literal["teacher", "student_encoder"] = "teacher",
        fusion: Literal["adaptive", "concat"] = "adaptive",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = PFADSegModel(
            top_k=self.hparams.top_k, decoder_input=decoder_input, fusion=fusion, output_map=self.hparams.output_map
        )
