"""DeSTSeg's losses against cases worked out by hand."""

import math

import pytest
import torch

from anomalib_destseg.components.loss import FocalLoss, SegmentationLoss, StudentCosineLoss, mask_at_resolution


def _image(*vectors: tuple[float, float]) -> torch.Tensor:
    """A ``[2, 2, 2]`` (C, H, W) feature map from four 2-channel pixel vectors listed row by row."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(2, 2, 2)


def test_student_cosine_loss_is_a_batch_sum_of_spatial_means() -> None:
    # Level 1: two images, 2 channels, 2x2 pixels.
    # Image A: student (1, 0) everywhere; teacher (1, 0), (0, 1), (-1, 0), (1, 1) -> cosines 1, 0, -1, 1/sqrt(2)
    #          -> distances 0, 1, 2, 1 - 1/sqrt(2); spatial mean (4 - 1/sqrt(2)) / 4.
    # Image B: student equals teacher (up to scale) -> distance 0 everywhere.
    student_a = _image((1, 0), (1, 0), (1, 0), (1, 0))
    teacher_a = _image((1, 0), (0, 1), (-1, 0), (1, 1))
    student_b = _image((2, 1), (0, 3), (1, 1), (-1, 4))
    teacher_b = _image((4, 2), (0, 1), (3, 3), (-2, 8))
    level_1 = (torch.stack([student_a, student_b]), torch.stack([teacher_a, teacher_b]))
    # Level 2: 1x1 pixel; student (3, 4), teacher (4, 3) in both images -> cosine 24/25, distance 0.04 per image.
    level_2 = (
        torch.tensor([3.0, 4.0]).view(1, 2, 1, 1).repeat(2, 1, 1, 1),
        torch.tensor([4.0, 3.0]).view(1, 2, 1, 1).repeat(2, 1, 1, 1),
    )
    loss = StudentCosineLoss()([level_1[0], level_2[0]], [level_1[1], level_2[1]])
    expected = (4 - 1 / math.sqrt(2)) / 4 + 0.0 + 2 * 0.04  # summed over the batch, not averaged
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # one image alone: its own spatial means (a batch mean would halve the two-image value instead)
    alone = StudentCosineLoss()([level_1[0][:1], level_2[0][:1]], [level_1[1][:1], level_2[1][:1]])
    assert alone.item() == pytest.approx((4 - 1 / math.sqrt(2)) / 4 + 0.04, abs=1e-6)


def test_student_cosine_loss_zero_for_identical_features_and_level_mismatch() -> None:
    features = [torch.rand(2, 8, 4, 4), torch.rand(2, 16, 2, 2)]
    assert StudentCosineLoss()(features, features).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="levels"):
        StudentCosineLoss()(features, features[:1])


def test_student_cosine_loss_gradient_reaches_only_the_student() -> None:
    student = [torch.rand(2, 4, 2, 2, requires_grad=True)]
    teacher = [torch.rand(2, 4, 2, 2)]
    StudentCosineLoss()(student, teacher).backward()
    assert student[0].grad is not None and student[0].grad.abs().sum() > 0


def test_focal_loss_gamma_4_hand_computed() -> None:
    probabilities = torch.tensor([0.9, 0.2, 0.5, 0.3])
    target = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # p_t = 0.9, 0.8, 0.5, 0.7; term = -ln(p_t) * (1 - p_t)^4 (binary cross-entropy times the focal factor)
    terms = [-math.log(p) * (1 - p) ** 4 for p in (0.9, 0.8, 0.5, 0.7)]
    assert FocalLoss(gamma=4)(probabilities, target).item() == pytest.approx(sum(terms) / 4, rel=1e-5)
    # gamma 0 is plain binary cross-entropy
    bce = -sum(math.log(p) for p in (0.9, 0.8, 0.5, 0.7)) / 4
    assert FocalLoss(gamma=0)(probabilities, target).item() == pytest.approx(bce, rel=1e-5)
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1)


@pytest.mark.parametrize(("logit", "target"), [(-16.0, 1.0), (16.0, 0.0)])
def test_focal_loss_keeps_the_gradient_of_a_confidently_wrong_pixel(logit: float, target: float) -> None:
    """At logit -16 for a defect pixel, d loss / d logit is -1 as in the reference (an epsilon in the log: -0.10)."""
    z = torch.tensor([logit], requires_grad=True)
    loss = FocalLoss(gamma=4)(torch.sigmoid(z), torch.tensor([target]))
    loss.backward()
    # the probability given to the true class: sigmoid(-16) = 1.125e-7 (for logit +16, 1 - sigmoid(16) as float32
    # rounds it, 1.19e-7)
    p = torch.sigmoid(torch.tensor(logit)).item() if target == 1.0 else 1 - torch.sigmoid(torch.tensor(logit)).item()
    # loss = -ln(p) (1 - p)^4 with dp/dz = +-p (1 - p): d/dz = -+[(1 - p)^5 - 4 p ln(p) (1 - p)^4]
    magnitude = (1 - p) ** 5 - 4 * p * math.log(p) * (1 - p) ** 4
    assert loss.item() == pytest.approx(-math.log(p) * (1 - p) ** 4, rel=1e-5)
    assert z.grad.item() == pytest.approx(-magnitude if target == 1.0 else magnitude, rel=1e-4)
    assert abs(z.grad.item()) > 0.99


def test_focal_loss_is_float32_under_bf16_autocast() -> None:
    probabilities = torch.tensor([0.9, 0.2, 0.5, 0.3], dtype=torch.bfloat16)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = FocalLoss(gamma=4)(probabilities, target)
    assert loss.dtype == torch.float32
    expected = FocalLoss(gamma=4)(probabilities.float(), target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# A 4x4 synthetic mask; at 2x2 (see the first test below) its target is [[0, 1], [1, 0]].
MASK = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float32).view(1, 1, 4, 4)


def test_mask_is_rebinarised_at_half_after_bilinear_resize() -> None:
    # 4x4 -> 2x2 bilinear (align_corners=False, no antialias) averages each 2x2 block:
    # top-left 1/4 on -> 0.25 -> 0; top-right 2/4 -> 0.5 -> 1; bottom-left 3/4 -> 0.75 -> 1; bottom-right 0 -> 0.
    target = mask_at_resolution(MASK, (2, 2))
    assert target.tolist() == [[[[0.0, 1.0], [1.0, 0.0]]]]


def test_segmentation_loss_hand_computed() -> None:
    mask = MASK  # target at 2x2: [[0, 1], [1, 0]]
    prediction = torch.tensor([[0.1, 0.6], [0.7, 0.2]]).view(1, 1, 2, 2)
    # p_t = 0.9, 0.6, 0.7, 0.8; L1 = (0.1 + 0.4 + 0.3 + 0.2) / 4 = 0.25
    focal = sum(-((1 - p) ** 4) * math.log(p + 1e-6) for p in (0.9, 0.6, 0.7, 0.8)) / 4
    loss = SegmentationLoss(focal_gamma=4)(prediction, mask)
    assert loss.item() == pytest.approx(focal + 0.25, rel=1e-5)


def test_segmentation_loss_is_zero_for_a_perfect_prediction() -> None:
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, :4, :4] = 1
    prediction = mask_at_resolution(mask, (2, 2))
    assert SegmentationLoss()(prediction, mask).item() == pytest.approx(0.0, abs=1e-6)
