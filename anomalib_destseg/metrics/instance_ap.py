"""Instance-level average precision (IAP and IAP@k) from the DeSTSeg paper (CVPR 2023).

The metric rewards a detector for covering every ground-truth defect *instance*, however small, while keeping pixel
precision high. It is computed over a whole data set as follows.

1. **Instances.** Every connected component of every ground-truth mask is one instance. Components are found per
   image with 8-connectivity (pixels touching at a corner belong to the same instance), using
   :func:`scipy.ndimage.label`. Instances never span two images.
2. **Instance score.** The pixel scores of an instance with ``n`` pixels are sorted in descending order and the value
   at 0-based index ``floor(coverage * n)`` is its score (``coverage=0.5`` in the paper). At any threshold
   ``t <= score`` at least ``floor(coverage * n) + 1`` of its pixels (more than ``coverage * n``) are predicted
   anomalous, i.e. the instance counts as detected.
3. **Points of the curve.** Every instance score ``t`` is used as a threshold. Its recall is the fraction of all
   instances whose score is ``>= t``; its precision is the *pixel* precision over all pixels of all images, where a
   pixel is predicted positive when its anomaly score is ``>= t`` and is a true positive when it lies inside a
   ground-truth mask. Precision is always defined there: the instance itself supplies at least one true positive.
4. **Interpolation.** Along increasing recall (decreasing threshold), precision is replaced by the maximum precision
   at any point of equal or higher recall (equal or lower threshold): the usual interpolated precision-recall curve.
   Going over the thresholds from low to high, this is a running maximum.
5. **Summaries.** ``IAP`` is the mean interpolated precision over the ``M`` instance thresholds (one per instance,
   tied scores repeated, so it equals the step-wise area ``sum(delta_recall * precision)``). ``IAP@k`` is the
   interpolated precision at the first point, in order of increasing recall, whose recall is ``>= k`` (``k=0.9``
   gives the paper's ``IAP@90``). Recall levels are compared exactly (as fractions), so ``k=0.9`` with ``M=10``
   instances picks the 9th best-covered instance.

Pixel precision at all ``M`` thresholds is computed in one pass: each pixel is binned by a binary search over the
sorted thresholds and the bin counts are summed from the top (``O(P log M)`` for ``P`` pixels, no re-thresholding of
the data set per instance and no sort of the pixels).

Data sets without any ground-truth instance have no recall and no IAP: :func:`instance_average_precision` raises a
:class:`ValueError`. The anomalib metrics are in :mod:`.instance_ap_metric`.

Example:
    >>> import torch
    >>> maps = torch.tensor([[[0.9, 0.8, 0.1], [0.2, 0.1, 0.1], [0.1, 0.1, 0.7]]])
    >>> masks = torch.tensor([[[1, 1, 0], [0, 0, 0], [0, 0, 1]]])
    >>> instance_average_precision(maps, masks)
    (1.0, 1.0)

"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

__all__ = ["compute_instance_scores", "instance_average_precision", "label_instances"]

# 8-connectivity inside each image, no connectivity across the batch dimension.
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True


def _prepare(anomaly_maps: Tensor, gt_masks: Tensor) -> tuple[Tensor, Tensor]:
    """Validate inputs and bring them to ``[N, H, W]`` float scores and bool masks."""
    anomaly_maps = torch.as_tensor(anomaly_maps).detach()
    gt_masks = torch.as_tensor(gt_masks).detach()
    # torchvision tv_tensors (anomalib's ``Mask``) -> plain tensors
    anomaly_maps = anomaly_maps.as_subclass(Tensor)
    gt_masks = gt_masks.as_subclass(Tensor)

    def _to_3d(tensor: Tensor, name: str) -> Tensor:
        if tensor.ndim == 2:
            return tensor.unsqueeze(0)
        if tensor.ndim == 4 and tensor.shape[1] == 1:
            return tensor.squeeze(1)
        if tensor.ndim == 3:
            return tensor
        msg = f"{name} must have shape [N, H, W], [N, 1, H, W] or [H, W], got {tuple(tensor.shape)}."
        raise ValueError(msg)

    anomaly_maps = _to_3d(anomaly_maps, "anomaly_maps")
    gt_masks = _to_3d(gt_masks, "gt_masks")
    if anomaly_maps.shape != gt_masks.shape:
        msg = (
            f"anomaly_maps and gt_masks must have the same shape, got {tuple(anomaly_maps.shape)} and "
            f"{tuple(gt_masks.shape)}."
        )
        raise ValueError(msg)

    if anomaly_maps.dtype == torch.bool or anomaly_maps.is_complex():
        msg = f"anomaly_maps must hold real-valued scores, got dtype {anomaly_maps.dtype}."
        raise ValueError(msg)
    if not anomaly_maps.is_floating_point():
        anomaly_maps = anomaly_maps.double()  # exact for integers up to 2**53
    elif anomaly_maps.dtype in {torch.float16, torch.bfloat16}:
        anomaly_maps = anomaly_maps.float()  # exact
    # a sum is NaN if any score is NaN (or if +inf meets -inf): one cheap pass before the exact check
    if torch.isnan(anomaly_maps.sum()) and torch.isnan(anomaly_maps).any():
        msg = "anomaly_maps contains NaN scores."
        raise ValueError(msg)

    if gt_masks.dtype != torch.bool:
        if gt_masks.is_complex() or not ((gt_masks == 0) | (gt_masks == 1)).all():
            msg = "gt_masks must be binary (bool, or numbers that are all 0 or 1)."
            raise ValueError(msg)
        gt_masks = gt_masks != 0
    return anomaly_maps, gt_masks


def _masked(values: Tensor, mask: Tensor) -> Tensor:
    """``values[mask]`` (raster order); through numpy on the CPU, where it is several times faster than torch."""
    if values.device.type == "cpu" and mask.device.type == "cpu" and values.dtype != torch.bfloat16:
        return torch.from_numpy(values.numpy()[mask.numpy()])
    return values[mask]


def _check_coverage(coverage: float) -> None:
    if not 0.0 <= coverage < 1.0:
        msg = f"coverage must be in [0, 1), got {coverage}."
        raise ValueError(msg)


def _check_recall_level(recall_level: float) -> None:
    if not 0.0 < recall_level <= 1.0:
        msg = f"recall_level must be in (0, 1], got {recall_level}."
        raise ValueError(msg)


def label_instances(gt_masks: Tensor) -> tuple[Tensor, int]:
    """Label the connected components (8-connectivity) of each mask with labels unique over the batch.

    Args:
        gt_masks: Boolean masks of shape ``[N, H, W]`` (any device).

    Returns:
        A CPU ``int64`` tensor of shape ``[N, H, W]`` (0 = background, ``1..K`` = instances, never shared between
        images) and the number of instances ``K``.

    Example:
        >>> masks = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 0]], [[1, 0, 1], [0, 0, 0], [0, 0, 0]]], dtype=bool)
        >>> labels, count = label_instances(masks)
        >>> count  # the diagonal pair touches at a corner: one instance; image 2 has two
        3

    """
    if gt_masks.ndim != 3:
        msg = f"gt_masks must have shape [N, H, W], got {tuple(gt_masks.shape)}."
        raise ValueError(msg)
    labels, count = ndimage.label(gt_masks.cpu().numpy().astype(bool, copy=False), structure=_STRUCTURE)
    return torch.from_numpy(labels.astype(np.int64, copy=False)), int(count)


def compute_instance_scores(anomaly_maps: Tensor, gt_masks: Tensor, coverage: float = 0.5) -> Tensor:
    """Score every ground-truth instance: the threshold at which a ``coverage`` share of it is detected.

    Args:
        anomaly_maps: Scores of shape ``[N, H, W]``, ``[N, 1, H, W]`` or ``[H, W]``.
        gt_masks: Binary masks of the same shape (bool or 0/1).
        coverage: Share of an instance that must be covered; the score is the value at 0-based descending rank
            ``floor(coverage * n)`` among its ``n`` pixel scores. Defaults to ``0.5`` (the paper's value).

    Returns:
        One score per instance (CPU, dtype of the scores after validation), images in order and, within an image, in
        :func:`scipy.ndimage.label` order (raster order of each instance's first pixel).

    Raises:
        ValueError: On malformed inputs (see :func:`instance_average_precision`).

    Example:
        >>> maps = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3]])  # one instance of 5 pixels: sorted .9 .7 .5 .3 .1
        >>> compute_instance_scores(maps, torch.ones(1, 5, dtype=bool))  # index floor(2.5) = 2
        tensor([0.5000])

    """
    _check_coverage(coverage)
    anomaly_maps, gt_masks = _prepare(anomaly_maps, gt_masks)
    return _instance_scores(_masked(anomaly_maps, gt_masks), gt_masks, coverage)


def _instance_scores(positive_scores: Tensor, gt_masks: Tensor, coverage: float) -> Tensor:
    """Instance scores from ``positive_scores = anomaly_maps[gt_masks]`` and validated ``[N, H, W]`` masks."""
    masks_np = gt_masks.cpu().numpy()
    labels, count = ndimage.label(masks_np, structure=_STRUCTURE)
    scores = positive_scores.cpu()  # raster order, the same as ``labels[masks_np]``
    if count == 0:
        return scores
    instance_of_pixel = labels[masks_np] - 1
    # Group the pixels by instance, in descending score order inside each instance (numpy: single-threaded and fast).
    order = np.lexsort((-scores.numpy(), instance_of_pixel))
    sizes = np.bincount(instance_of_pixel, minlength=count)
    starts = np.cumsum(sizes) - sizes
    ranks = np.minimum(np.floor(coverage * sizes).astype(np.int64), sizes - 1)
    return scores[torch.from_numpy(order[starts + ranks])]


def _summarise(precision: Tensor, recall_level: float) -> tuple[float, float]:
    """IAP and IAP@k from the raw precision at each instance threshold, thresholds in descending order."""
    interpolated = precision.flip(0).cummax(0).values.flip(0)  # max over equal-or-lower thresholds
    num_instances = interpolated.numel()
    needed = math.ceil(Fraction(recall_level).limit_denominator(1_000_000) * num_instances)
    return interpolated.mean().item(), interpolated[max(needed, 1) - 1].item()


def _precision(true_pos: Tensor, predicted_pos: Tensor) -> Tensor:
    """Float64 precision on the CPU (some accelerators lack float64); ``true_pos >= 1`` at instance thresholds."""
    return true_pos.cpu().double() / predicted_pos.cpu().double()


def _counts_at_or_above(values: Tensor, thresholds: Tensor) -> Tensor:
    """For each of the ascending ``thresholds``, the number of ``values`` that are ``>=`` it.

    Each value is binned by the number of thresholds ``<=`` it (binary search over the ``M`` thresholds, in chunks to
    bound memory); ``value >= thresholds[j]`` exactly when that number is ``> j``. ``O(P log M)`` for ``P`` values,
    no sort of the values.
    """
    thresholds = thresholds.to(device=values.device, dtype=values.dtype)
    hist = torch.zeros(thresholds.numel() + 1, dtype=torch.long, device=values.device)
    for chunk in values.reshape(-1).split(1 << 24):
        bins = torch.searchsorted(thresholds, chunk, side="right")
        hist += torch.bincount(bins, minlength=thresholds.numel() + 1)
    return hist.flip(0).cumsum(0).flip(0)[1:]


def _iap_exact(
    instance_scores: Tensor,
    positive_scores: Tensor,
    pixel_scores: Tensor,
    recall_level: float,
) -> tuple[float, float]:
    """IAP and IAP@k from instance scores, the scores of the defect pixels and the scores of all pixels."""
    dtype = torch.promote_types(positive_scores.dtype, pixel_scores.dtype)
    thresholds = torch.sort(instance_scores.to(dtype)).values  # ascending; scores are the pixels' own values
    true_pos = _counts_at_or_above(positive_scores.to(dtype), thresholds)
    predicted_pos = _counts_at_or_above(pixel_scores.to(dtype), thresholds)
    # reverse to descending thresholds, i.e. increasing recall
    return _summarise(_precision(true_pos.flip(0), predicted_pos.flip(0)), recall_level)


def instance_average_precision(
    anomaly_maps: Tensor,
    gt_masks: Tensor,
    coverage: float = 0.5,
    recall_level: float = 0.9,
) -> tuple[float, float]:
    """Compute the DeSTSeg instance average precision over a whole data set.

    See the module docstring for the exact definition (8-connected instances, instance score at descending rank
    ``floor(coverage * n)``, pixel precision over all pixels of all images, interpolated precision).

    Args:
        anomaly_maps: Pixel anomaly scores, shape ``[N, H, W]``, ``[N, 1, H, W]`` or ``[H, W]``; float or integer.
        gt_masks: Ground-truth masks of the same shape; bool, or numbers that are all 0 or 1.
        coverage: Share of an instance that must be covered for it to count as detected. Defaults to ``0.5``.
        recall_level: Recall ``k`` of ``IAP@k``. Defaults to ``0.9`` (``IAP@90``).

    Returns:
        ``(iap, iap_at_k)`` as Python floats in ``[0, 1]``.

    Raises:
        ValueError: If the shapes differ or are not image-shaped, the masks are not binary, the scores contain NaN,
            ``coverage`` is outside ``[0, 1)``, ``recall_level`` is outside ``(0, 1]``, or the ground truth contains
            no instance at all (no defect pixel in any image: IAP is undefined).

    Example:
        >>> maps = torch.tensor([[[0.9, 0.8, 0.1], [0.2, 0.1, 0.1], [0.1, 0.1, 0.7]]])
        >>> masks = torch.tensor([[[1, 1, 0], [0, 0, 0], [0, 0, 1]]])
        >>> instance_average_precision(maps, masks)
        (1.0, 1.0)

    """
    _check_coverage(coverage)
    _check_recall_level(recall_level)
    anomaly_maps, gt_masks = _prepare(anomaly_maps, gt_masks)
    positive_scores = _masked(anomaly_maps, gt_masks)
    scores = _instance_scores(positive_scores, gt_masks, coverage)
    if scores.numel() == 0:
        msg = (
            "Instance AP is undefined: the ground-truth masks contain no defect pixel (no instance) in any of the "
            f"{gt_masks.shape[0]} images."
        )
        raise ValueError(msg)
    return _iap_exact(scores, positive_scores, anomaly_maps, recall_level)
