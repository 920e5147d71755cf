"""The losses of both models: the student's cosine loss (stage 1), focal + L1 for the segmentation network (stage 2).

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

from .feature_ops import cosine_distance_map


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
        # In float32 whatever the features' precision (bf16 / fp16 autocast): normalising over hundreds of channels
        # and summing over the batch would lose digits. A no-op in float32.
        with torch.autocast(student_features[0].device.type, enabled=False):
            total = student_features[0].new_zeros((), dtype=torch.float32)
            for student, teacher in zip(student_features, teacher_features, strict=True):
                height, width = student.shape[-2:]
                total = total + cosine_distance_map(student.float(), teacher.float()).sum() / (height * width)
        return total


class FocalLoss(nn.Module):
    """Binary focal loss on probabilities as the reference computes it, averaged over all pixels.

    ``BCE(p, y) * (1 - p_t)^gamma`` with ``p_t = p*y + (1-p)*(1-y)`` and torch's binary cross-entropy (whose log is
    clamped at -100), no class weighting (alpha). There is no epsilon inside the log: ``log(p_t + 1e-6)`` would cut
    the gradient on confidently wrong pixels (at logit -16 to a tenth). Computed in float32, also under autocast.

    Args:
        gamma: Focusing parameter (the reference uses 4).

    Example:
        >>> import torch
        >>> loss = FocalLoss(gamma=0.0)  # gamma 0: plain binary cross-entropy
        >>> round(float(loss(torch.tensor([0.5]), torch.tensor([1.0]))), 4)  # -log(0.5)
        0.6931

    """

    def __init__(self, gamma: float = 4.0) -> None:
        super().__init__()
        if gamma < 0:
            msg = f"focal gamma must be >= 0, got {gamma}."
            raise ValueError(msg)
        self.gamma = gamma

    def forward(self, probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the mean focal loss of probabilities against a 0/1 target of the same shape."""
        # torch refuses binary_cross_entropy under CUDA autocast: the loss is computed outside it, in float32.
        with torch.autocast(probabilities.device.type, enabled=False):
            probabilities, target = probabilities.float(), target.float()
            # torch's BCE raises on NaN probabilities; a NaN loss instead lets the non-finite guard stop training
            # and save the last good state. Adds exactly 0 (and a zero gradient) when every value is finite.
            finite = torch.nan_to_num(probabilities, nan=0.5)
            cross_entropy = F.binary_cross_entropy(finite, target, reduction="none")
            p_t = finite * target + (1 - finite) * (1 - target)
            return (cross_entropy * (1 - p_t) ** self.gamma).mean() + 0.0 * probabilities.sum()


def mask_at_resolution(mask: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Resize a ``[B, 1, H, W]`` 0/1 mask bilinearly to ``size`` and binarise it again at 0.5."""
    resized = F.interpolate(mask.float(), size=size, mode="bilinear", align_corners=False)
    return (resized >= 0.5).float()


class SegmentationLoss(nn.Module):
    """Focal loss plus L1 (mean absolute error), weight 1 each, against the mask at the output's resolution.

    Both are computed in float32 whatever the prediction's precision.

    Args:
        focal_gamma: Focal loss gamma (reference 4).

    """

    def __init__(self, focal_gamma: float = 4.0) -> None:
        super().__init__()
        self.focal = FocalLoss(gamma=focal_gamma)

    def forward(self, prediction: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Compare a ``[B, 1, h, w]`` probability map with a full-size ``[B, 1, H, W]`` synthetic mask."""
        target = mask_at_resolution(mask, prediction.shape[-2:])
        return self.focal(prediction, target) + F.l1_loss(prediction.float(), target)
