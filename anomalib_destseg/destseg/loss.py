"""DeSTSeg's losses: the student's cosine loss (stage 1) and focal + L1 for the segmentation network (stage 2).

Example:
    >>> import torch
    >>> features = [torch.rand(2, 8, 4, 4)]
    >>> abs(float(StudentCosineLoss()(features, features))) < 1e-6  # identical features: zero distance
    True

"""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_destseg.components.feature_ops import cosine_distance_map


class StudentCosineLoss(nn.Module):
    """Sum over levels of the per-pixel cosine distance, summed over pixels and batch and divided by H_k * W_k.

    This is a batch SUM of spatial means, as the reference computes it: the gradient grows with the batch size, so
    the reference's learning rate (0.4) is tuned for batch 32.
    """

    def forward(
        self, student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Compare the student's reconstruction of each level with the teacher's features of the clean image."""
        if len(student_features) != len(teacher_features):
            msg = f"Got {len(student_features)} student levels but {len(teacher_features)} teacher levels."
            raise ValueError(msg)
        total = student_features[0].new_zeros(())
        for student, teacher in zip(student_features, teacher_features, strict=True):
            height, width = student.shape[-2:]
            total = total + cosine_distance_map(student, teacher).sum() / (height * width)
        return total


class FocalLoss(nn.Module):
    """Binary focal loss on probabilities: ``-(1 - p_t)^gamma * log(p_t + eps)``, averaged over all pixels.

    No class weighting (alpha). ``eps`` = 1e-6 keeps the logarithm finite for saturated outputs.

    Args:
        gamma: Focusing parameter (the reference uses 4).

    """

    def __init__(self, gamma: float = 4.0, eps: float = 1e-6) -> None:
        super().__init__()
        if gamma < 0:
            msg = f"focal gamma must be >= 0, got {gamma}."
            raise ValueError(msg)
        self.gamma = gamma
        self.eps = eps

    def forward(self, probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the mean focal loss of probabilities against a 0/1 target of the same shape."""
        p_t = torch.where(target > 0.5, probabilities, 1 - probabilities)
        # log(p_t + eps) > 0 for p_t > 1 - eps: capped at 0 so that the loss is never negative (all else unchanged).
        return (-((1 - p_t) ** self.gamma) * torch.log(p_t + self.eps).clamp(max=0)).mean()


def mask_at_resolution(mask: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Resize a ``[B, 1, H, W]`` 0/1 mask bilinearly to ``size`` and binarise it again at 0.5."""
    resized = F.interpolate(mask.float(), size=size, mode="bilinear", align_corners=False)
    return (resized >= 0.5).float()


class SegmentationLoss(nn.Module):
    """Focal loss plus L1 (mean absolute error), weight 1 each, against the mask at the output's resolution.

    Args:
        focal_gamma: Focal loss gamma (reference 4).

    """

    def __init__(self, focal_gamma: float = 4.0) -> None:
        super().__init__()
        self.focal = FocalLoss(gamma=focal_gamma)

    def forward(self, prediction: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Compare a ``[B, 1, h, w]`` probability map with a full-size ``[B, 1, H, W]`` synthetic mask."""
        target = mask_at_resolution(mask, prediction.shape[-2:])
        return self.focal(prediction, target) + F.l1_loss(prediction, target)
