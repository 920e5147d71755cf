"""DeSTSeg's torch model: frozen teacher, denoising encoder-decoder student, segmentation network.

Example:
    >>> import torch
    >>> model = DeSTSegModel().eval()
    >>> model.teacher.load_weights("imagenet")  # doctest: +SKIP
    >>> output = model(torch.rand(2, 3, 256, 256))
    >>> output.anomaly_map.shape, output.pred_score.shape
    (torch.Size([2, 1, 256, 256]), torch.Size([2]))

"""

import torch
from torch import nn

from anomalib_destseg.components.student import StudentDecoder, StudentEncoder
from anomalib_destseg.components.student_teacher import SegmentationGuidedStudentTeacher


class DeSTSegModel(SegmentationGuidedStudentTeacher):
    """DeSTSeg (Zhang et al., CVPR 2023): the student is a ResNet-18 encoder and a skip-free decoder.

    The teacher is created without weights; call ``model.teacher.load_weights(...)`` (the Lightning module does
    this when training starts).

    Args:
        top_k: Number of largest anomaly-map values averaged into the image score.
        output_map: The map returned in eval mode: ``"segmentation"`` (default) or ``"dest"`` (the teacher-student
            map, the reference's second output).

    """

    def __init__(self, top_k: int = 100, output_map: str = "segmentation") -> None:
        super().__init__(segmentation_in_channels=64 + 128 + 256, top_k=top_k, output_map=output_map)
        self.student_encoder = StudentEncoder()
        self.student_decoder = StudentDecoder()

    @property
    def student_modules(self) -> list[nn.Module]:
        """The encoder and decoder train in stage 1."""
        return [self.student_encoder, self.student_decoder]

    def student_features(
        self, normalized: torch.Tensor, teacher_features: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Encode with the student's own ResNet-18 and decode from its deepest level only."""
        del teacher_features  # DeSTSeg's student never sees the teacher's features.
        return self.student_decoder(self.student_encoder(normalized)[-1])
