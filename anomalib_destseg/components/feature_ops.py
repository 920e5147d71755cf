"""Feature operations shared by the student-teacher models.

The reference normalises every feature map to unit length over channels before comparing or multiplying teacher
and student features; the segmentation network sees their element-wise product at the finest resolution, and the
DeST map (the reference's second output) is the product over levels of their cosine distances.

Example:
    >>> import torch
    >>> x = torch.ones(1, 4, 2, 2)
    >>> channel_l2_normalize(x)[0, :, 0, 0]
    tensor([0.5000, 0.5000, 0.5000, 0.5000])

"""

from collections.abc import Sequence

import torch
from torch.nn import functional as F  # noqa: N812

NORM_EPS = 1e-12


def channel_l2_normalize(features: torch.Tensor) -> torch.Tensor:
    """Divide a feature map by its L2 norm over channels: n(x) = x / (||x||_2 + 1e-12).

    Args:
        features: Tensor of shape ``[B, C, H, W]``.

    Returns:
        Tensor of the same shape whose channel vectors have unit length (or are zero).

    """
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + NORM_EPS)


def cosine_distance_map(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-pixel cosine distance ``1 - <n(student), n(teacher)>``.

    Args:
        student: Student features ``[B, C, H, W]``.
        teacher: Teacher features of the same shape.

    Returns:
        Tensor ``[B, H, W]`` with values in ``[0, 2]``.

    """
    return 1 - (channel_l2_normalize(student) * channel_l2_normalize(teacher)).sum(dim=1)


def level_products(
    teacher_features: Sequence[torch.Tensor],
    student_features: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """Per-level products X_k = ``-n(T_k) * n(S_k)`` (element-wise; the sign follows the reference code).

    Args:
        teacher_features: Teacher feature maps, finest first (e.g. 64@64, 128@32, 256@16 for 256x256 inputs).
        student_features: Student feature maps with the same shapes.

    Returns:
        One tensor per level, each at its own resolution.

    Example:
        >>> t = [torch.ones(1, 4, 2, 2)]
        >>> level_products(t, t)[0][0, :, 0, 0]
        tensor([-0.2500, -0.2500, -0.2500, -0.2500])

    """
    if len(teacher_features) != len(student_features):
        msg = f"Got {len(teacher_features)} teacher levels but {len(student_features)} student levels."
        raise ValueError(msg)
    return [
        -channel_l2_normalize(teacher) * channel_l2_normalize(student)
        for teacher, student in zip(teacher_features, student_features, strict=True)
    ]


def concat_at_finest(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Resize every level bilinearly to the first (finest) level's size and concatenate along channels.

    Example:
        >>> concat_at_finest([torch.rand(2, 4, 8, 8), torch.rand(2, 8, 4, 4)]).shape
        torch.Size([2, 12, 8, 8])

    """
    size = levels[0].shape[-2:]
    resized = [
        level if level.shape[-2:] == size else F.interpolate(level, size=size, mode="bilinear", align_corners=False)
        for level in levels
    ]
    return torch.cat(resized, dim=1)


def segmentation_input(
    teacher_features: Sequence[torch.Tensor],
    student_features: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Build the segmentation network's input from teacher and student features of the same image.

    Per level k the input is X_k = ``-n(T_k) * n(S_k)`` (:func:`level_products`), every level is resized bilinearly
    to the finest level's size and the levels are concatenated along channels (:func:`concat_at_finest`).

    Args:
        teacher_features: Teacher feature maps, finest first (e.g. 64@64, 128@32, 256@16 for 256x256 inputs).
        student_features: Student feature maps with the same shapes.

    Returns:
        Tensor ``[B, sum(C_k), H_1, W_1]`` (448 channels for the ResNet-18 levels).

    Example:
        >>> t = [torch.rand(2, 4, 8, 8), torch.rand(2, 8, 4, 4)]
        >>> segmentation_input(t, t).shape
        torch.Size([2, 12, 8, 8])

    """
    return concat_at_finest(level_products(teacher_features, student_features))


def dest_map(
    teacher_features: Sequence[torch.Tensor],
    student_features: Sequence[torch.Tensor],
) -> torch.Tensor:
    """The reference's DeST map: the product over levels of the teacher-student cosine distance, at the finest size.

    Per level k the distance is ``1 - <n(S_k), n(T_k)>`` (:func:`cosine_distance_map`); every level is resized
    bilinearly (``align_corners=False``) to the first (finest) level's size and the levels are multiplied. Computed
    in float32 whatever the features' dtype (under bf16 autocast the product of three small distances would
    otherwise keep 8 significant bits).

    Args:
        teacher_features: Teacher feature maps, finest first.
        student_features: Student feature maps with the same shapes.

    Returns:
        Tensor ``[B, 1, H_1, W_1]`` (float32) with values in ``[0, 2 ** levels]``.

    Raises:
        ValueError: If the two lists have different lengths.

    Example:
        >>> t = [torch.ones(1, 4, 4, 4), torch.ones(1, 8, 2, 2)]
        >>> dest_map(t, [-t[0], -t[1]])[0, 0, 0, 0].item()  # opposite at both levels: 2 * 2
        4.0
        >>> dest_map(t, t).shape, dest_map(t, t).abs().max().item()  # identical features: distance 0
        (torch.Size([1, 1, 4, 4]), 0.0)

    """
    if len(teacher_features) != len(student_features):
        msg = f"Got {len(teacher_features)} teacher levels but {len(student_features)} student levels."
        raise ValueError(msg)
    distances = [
        cosine_distance_map(student.float(), teacher.float()).unsqueeze(1)
        for teacher, student in zip(teacher_features, student_features, strict=True)
    ]
    size = distances[0].shape[-2:]
    product = distances[0]
    for distance in distances[1:]:
        if distance.shape[-2:] != size:
            distance = F.interpolate(distance, size=size, mode="bilinear", align_corners=False)
        product = product * distance
    return product
