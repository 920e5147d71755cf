"""PFADSeg's torch model: teacher encoder, fused bottleneck, student decoder, adaptive fusion, segmentation network.

PFADSeg ("Teacher Encoder-Student Decoder Denoising Guided Segmentation Network for Anomaly Detection", Song et al.,
arXiv 2501.12104). Only the abstract is public; this architecture is INFERRED from it and built on DeSTSeg's parts
(see ``docs/pfadseg.md``). Inferred here: the multi-scale fusion operators, the form of the adaptive fusion, that
the decoder reads the teacher's raw (not channel-normalised) features, and the zero-initialised level weights.

Example:
    >>> import torch
    >>> model = PFADSegModel().eval()
    >>> model.teacher.load_weights("imagenet")  # doctest: +SKIP
    >>> output = model(torch.rand(2, 3, 256, 256))
    >>> output.anomaly_map.shape, output.pred_score.shape
    (torch.Size([2, 1, 256, 256]), torch.Size([2]))
    >>> model.fusion_weights(torch.rand(2, 3, 256, 256)).shape
    torch.Size([2, 3, 64, 64])

"""

from collections.abc import Sequence

import torch
from torch import nn

from anomalib_destseg.components.feature_ops import concat_at_finest, level_products
from anomalib_destseg.components.input_size import check_images
from anomalib_destseg.components.student import StudentDecoder, StudentEncoder
from anomalib_destseg.components.student_teacher import SegmentationGuidedStudentTeacher

from .fusion import AdaptiveLevelFusion, MultiScaleFusionBottleneck

TEACHER_CHANNELS = (64, 128, 256)
DECODER_INPUTS = ("teacher", "student_encoder")
FUSIONS = ("adaptive", "concat")
FUSION_WIDTH = 128


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming the allowed values unless ``value`` is one of ``choices``."""
    if value not in choices:
        msg = f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}."
        raise ValueError(msg)


class PFADSegModel(SegmentationGuidedStudentTeacher):
    """PFADSeg (inferred from the abstract of arXiv 2501.12104) on DeSTSeg's teacher, decoder and segmentation net.

    With the defaults the frozen teacher encodes the (corrupted) image, :class:`MultiScaleFusionBottleneck` fuses
    its raw three levels into a 512-channel 1/32 map, DeSTSeg's skip-free decoder reconstructs the teacher's levels
    of the clean image, and :class:`AdaptiveLevelFusion` weights the per-level products ``X_k = -n(T_k) * n(S_k)``
    per pixel; its 128-channel output is concatenated with the plain 448-channel DeSTSeg input (576 channels) for
    the segmentation network. The teacher is created without weights; call ``model.teacher.load_weights(...)``.

    Args:
        top_k: Number of largest anomaly-map values averaged into the image score.
        decoder_input: ``"teacher"`` (the teacher's fused features, PFADSeg) or ``"student_encoder"`` (the student's
            own randomly initialised ResNet-18 encoder, whose deepest level feeds the decoder exactly as in DeSTSeg;
            no fusion bottleneck is built then).
        fusion: ``"adaptive"`` (level weights, 576-channel segmentation input) or ``"concat"`` (DeSTSeg's plain
            448-channel concatenation). ``decoder_input="student_encoder", fusion="concat"`` is DeSTSeg's
            architecture.
        output_map: The map returned in eval mode: ``"segmentation"`` (default) or ``"dest"`` (the cosine-distance
            map of the teacher's and the student decoder's features, computed as DeSTSeg's DeST map; inferred).

    Raises:
        ValueError: If ``decoder_input``, ``fusion`` or ``output_map`` is not one of the choices above.

    """

    def __init__(
        self,
        top_k: int = 100,
        decoder_input: str = "teacher",
        fusion: str = "adaptive",
        output_map: str = "segmentation",
    ) -> None:
        check_choice("decoder_input", decoder_input, DECODER_INPUTS)
        check_choice("fusion", fusion, FUSIONS)
        plain_channels = sum(TEACHER_CHANNELS)
        in_channels = plain_channels + FUSION_WIDTH if fusion == "adaptive" else plain_channels
        super().__init__(segmentation_in_channels=in_channels, top_k=top_k, output_map=output_map)
        self.decoder_input = decoder_input
        self.fusion = fusion
        self.fusion_bottleneck: MultiScaleFusionBottleneck | None = None
        self.student_encoder: StudentEncoder | None = None
        if decoder_input == "teacher":
            self.fusion_bottleneck = MultiScaleFusionBottleneck(TEACHER_CHANNELS, out_channels=512)
        else:
            self.student_encoder = StudentEncoder()
        self.student_decoder = StudentDecoder()
        self.adaptive_fusion: AdaptiveLevelFusion | None = None
        if fusion == "adaptive":
            self.adaptive_fusion = AdaptiveLevelFusion(TEACHER_CHANNELS, width=FUSION_WIDTH)

    # --- stage 1: the student ----------------------------------------------------------------------------------
    @property
    def student_modules(self) -> list[nn.Module]:
        """Fusion bottleneck (or student encoder) and decoder train in stage 1."""
        first = self.fusion_bottleneck if self.fusion_bottleneck is not None else self.student_encoder
        return [first, self.student_decoder]

    @property
    def student_reads_teacher(self) -> bool:
        """The decoder starts from the teacher's features of the student's input unless the student encodes."""
        return self.fusion_bottleneck is not None

    def student_features(
        self, normalized: torch.Tensor, teacher_features: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Decode S1..S3 from the fused raw teacher features of ``normalized`` (or from the student's own E4).

        Args:
            normalized: ImageNet-normalised images.
            teacher_features: The teacher's features of ``normalized`` if already computed (computed otherwise).

        """
        if self.fusion_bottleneck is None:
            return self.student_decoder(self.student_encoder(normalized)[-1])
        if teacher_features is None:
            teacher_features = self.teacher(normalized)
        return self.student_decoder(self.fusion_bottleneck(teacher_features))

    # --- stage 2: fusion and segmentation network ---------------------------------------------------------------
    @property
    def segmentation_modules(self) -> list[nn.Module]:
        """The adaptive fusion (if any) trains with the segmentation network in stage 2."""
        if self.adaptive_fusion is None:
            return [self.segmentation_network]
        return [self.adaptive_fusion, self.segmentation_network]

    def segmentation_features(
        self, teacher_features: list[torch.Tensor], student_features: list[torch.Tensor]
    ) -> torch.Tensor:
        """The 448-channel DeSTSeg input, followed by the adaptive fusion's 128 channels when it is enabled."""
        products = level_products(teacher_features, student_features)
        plain = concat_at_finest(products)
        if self.adaptive_fusion is None:
            return plain
        return torch.cat([plain, self.adaptive_fusion(products, size=plain.shape[-2:])], dim=1)

    def segmentation_parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Stage-2 groups: (adaptive fusion + residual blocks, ASPP + head), trained at 0.1 and 0.01 by default."""
        fast, slow = super().segmentation_parameter_groups()
        if self.adaptive_fusion is not None:
            fast = [*self.adaptive_fusion.parameters(), *fast]
        return fast, slow

    @torch.no_grad()
    def fusion_weights(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel level weights ``[B, 3, H/4, W/4]`` of the adaptive fusion for ``[0, 1]`` images.

        The weights are non-negative and sum to 1 over the three levels (finest first). Computed in the model's
        current mode (call ``eval()`` first for inference statistics).

        Raises:
            RuntimeError: If the model was built with ``fusion="concat"``.

        """
        if self.adaptive_fusion is None:
            msg = "fusion_weights needs fusion='adaptive'; this model concatenates the levels (fusion='concat')."
            raise RuntimeError(msg)
        check_images(images)
        teacher, student = self.encode(images)
        return self.adaptive_fusion.level_weights(level_products(teacher, student), size=teacher[0].shape[-2:])
