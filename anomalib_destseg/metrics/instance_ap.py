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

Pixel precision at all thresholds is computed with two sorts (scores of defect pixels and of the other pixels) and
binary searches, never by re-thresholding the data set per instance.

Data sets without any ground-truth instance have no recall and no IAP: :func:`instance_average_precision` raises a
:class:`ValueError`, the metric classes warn and return ``nan`` (so a long ``anomalib test`` on defect-free data still
reports its other metrics).

Example:
    >>> import torch
    >>> maps = torch.tensor([[[0.9, 0.8, 0.1], [0.2, 0.1, 0.1], [0.1, 0.1, 0.7]]])
    >>> masks = torch.tensor([[[1, 1, 0], [0, 0, 0], [0, 0, 1]]])
    >>> instance_average_precision(maps, masks)
    (1.0, 1.0)

"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import torch
from anomalib.metrics import AnomalibMetric
from scipy import ndimage
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = [
    "IAP",
    "IAP90",
    "InstanceAP",
    "InstanceAP90",
    "compute_instance_scores",
    "instance_average_precision",
    "label_instances",
]

# 8-connectivity inside each image, no connectivity across the batch dimension.
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True

_NUM_HALF_BINS = 1 << 16  # number of float16 bit patterns


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
    if torch.isnan(anomaly_maps).any():
        msg = "anomaly_maps contains NaN scores."
        raise ValueError(msg)

    if gt_masks.dtype != torch.bool:
        if gt_masks.is_complex() or not ((gt_masks == 0) | (gt_masks == 1)).all():
            msg = "gt_masks must be binary (bool, or numbers that are all 0 or 1)."
            raise ValueError(msg)
        gt_masks = gt_masks != 0
    return anomaly_maps, gt_masks


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
    return _instance_scores(anomaly_maps, gt_masks, coverage)


def _instance_scores(anomaly_maps: Tensor, gt_masks: Tensor, coverage: float) -> Tensor:
    """:func:`compute_instance_scores` on validated ``[N, H, W]`` inputs."""
    labels, count = label_instances(gt_masks)
    if count == 0:
        return anomaly_maps.new_empty(0, device="cpu")
    scores = anomaly_maps[gt_masks].cpu()  # raster order, same as ``labels[mask]``
    instance_of_pixel = labels[gt_masks.cpu()] - 1
    # Sort by instance, and by descending score inside each instance (two stable sorts = lexsort).
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(instance_of_pixel[order], stable=True)]
    sizes = torch.bincount(instance_of_pixel, minlength=count)
    starts = torch.cumsum(sizes, 0) - sizes
    ranks = torch.floor(coverage * sizes.double()).long().clamp_max(sizes - 1)
    return scores[order][starts + ranks]


def _summarise(precision: Tensor, recall_level: float) -> tuple[float, float]:
    """IAP and IAP@k from the raw precision at each instance threshold, thresholds in descending order."""
    interpolated = precision.flip(0).cummax(0).values.flip(0)  # max over equal-or-lower thresholds
    num_instances = interpolated.numel()
    needed = math.ceil(Fraction(recall_level).limit_denominator(1_000_000) * num_instances)
    return interpolated.mean().item(), interpolated[max(needed, 1) - 1].item()


def _precision(true_pos: Tensor, false_pos: Tensor) -> Tensor:
    """Float64 precision on the CPU (some accelerators lack float64); ``true_pos >= 1`` at instance thresholds."""
    true_pos, false_pos = true_pos.cpu(), false_pos.cpu()
    return true_pos.double() / (true_pos + false_pos).double()


def _iap_exact(
    instance_scores: Tensor,
    positive_scores: Tensor,
    negative_scores: Tensor,
    recall_level: float,
) -> tuple[float, float]:
    """IAP and IAP@k from instance scores and the flat scores of defect (positive) and other (negative) pixels."""
    dtype = torch.promote_types(positive_scores.dtype, negative_scores.dtype)
    device = positive_scores.device
    thresholds = torch.sort(instance_scores.to(device=device, dtype=dtype), descending=True).values
    positives = torch.sort(positive_scores.to(dtype)).values
    negatives = torch.sort(negative_scores.to(device=device, dtype=dtype)).values
    # pixels scoring >= t are those from the first index not below t (side="left") to the end
    true_pos = positives.numel() - torch.searchsorted(positives, thresholds, side="left")
    false_pos = negatives.numel() - torch.searchsorted(negatives, thresholds, side="left")
    return _summarise(_precision(true_pos, false_pos), recall_level)


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
    scores = _instance_scores(anomaly_maps, gt_masks, coverage)
    if scores.numel() == 0:
        msg = (
            "Instance AP is undefined: the ground-truth masks contain no defect pixel (no instance) in any of the "
            f"{gt_masks.shape[0]} images."
        )
        raise ValueError(msg)
    return _iap_exact(scores, anomaly_maps[gt_masks], anomaly_maps[~gt_masks], recall_level)


def _half_keys(scores: Tensor) -> Tensor:
    """Order-preserving bin index in ``[0, 65535]`` of each score rounded to float16 (``-0`` merged with ``+0``)."""
    bits = (scores.to(torch.float16) + 0.0).view(torch.int16).to(torch.int64)
    # non-negative halves: bits in [0, 0x7C00] -> 32768 + bits; negative halves: bits = magnitude - 32768 -> -1 - bits
    return torch.where(bits >= 0, bits + 32768, -1 - bits)


class _InstanceAP(Metric):
    """Torchmetrics core of :class:`IAP` (returns IAP); see :class:`IAP` for the arguments."""

    is_differentiable: bool = False
    higher_is_better: bool = True
    full_state_update: bool = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    def __init__(
        self,
        coverage: float = 0.5,
        recall_level: float = 0.9,
        compact: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        _check_coverage(coverage)
        _check_recall_level(recall_level)
        self.coverage = coverage
        self.recall_level = recall_level
        self.compact = compact
        self.add_state("instance_scores", default=[], dist_reduce_fx="cat")
        if compact:
            self.add_state("positive_hist", default=torch.zeros(_NUM_HALF_BINS, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state("negative_hist", default=torch.zeros(_NUM_HALF_BINS, dtype=torch.long), dist_reduce_fx="sum")
        else:
            self.add_state("positive_scores", default=[], dist_reduce_fx="cat")
            self.add_state("negative_scores", default=[], dist_reduce_fx="cat")

    def update(self, anomaly_maps: Tensor, gt_masks: Tensor) -> None:
        """Add a batch of anomaly maps and ground-truth masks.

        Args:
            anomaly_maps: Scores of shape ``[B, H, W]`` or ``[B, 1, H, W]``.
            gt_masks: Binary masks of the same shape.

        Raises:
            ValueError: On mismatched shapes, non-binary masks or NaN scores.

        """
        anomaly_maps, gt_masks = _prepare(anomaly_maps, gt_masks)
        if self.compact:
            anomaly_maps = anomaly_maps.to(torch.float16)
            if torch.isinf(anomaly_maps).any():
                warnings.warn(
                    "IAP(compact=True): scores beyond the float16 range (|score| > 65504) saturate to +-inf.",
                    stacklevel=2,
                )
        scores = _instance_scores(anomaly_maps, gt_masks, self.coverage)
        if self.compact:
            keys = _half_keys(anomaly_maps)
            self.positive_hist += torch.bincount(keys[gt_masks], minlength=_NUM_HALF_BINS).to(self.positive_hist)
            self.negative_hist += torch.bincount(keys[~gt_masks], minlength=_NUM_HALF_BINS).to(self.negative_hist)
            self.instance_scores.append(_half_keys(scores).to(self.positive_hist.device))
        else:
            device = self.device
            self.instance_scores.append(scores.to(device))
            self.positive_scores.append(anomaly_maps[gt_masks].to(device))
            self.negative_scores.append(anomaly_maps[~gt_masks].to(device))

    def _compute_both(self) -> tuple[float, float]:
        """Return ``(iap, iap_at_k)``; ``(nan, nan)`` with a warning when no instance was seen."""
        states = self.instance_scores
        instance_scores = torch.empty(0) if isinstance(states, list) and not states else dim_zero_cat(states)
        if instance_scores.numel() == 0:
            warnings.warn(
                f"{type(self).__name__}: no ground-truth instance (defect pixel) in any image; IAP is undefined, "
                "returning nan.",
                stacklevel=2,
            )
            return math.nan, math.nan
        if self.compact:
            # true/false positives at a bin = number of defect/other pixels in that bin or above
            true_pos = self.positive_hist.flip(0).cumsum(0).flip(0)
            false_pos = self.negative_hist.flip(0).cumsum(0).flip(0)
            keys = torch.sort(instance_scores.to(true_pos.device), descending=True).values
            return _summarise(_precision(true_pos[keys], false_pos[keys]), self.recall_level)
        return _iap_exact(
            instance_scores,
            dim_zero_cat(self.positive_scores),
            dim_zero_cat(self.negative_scores),
            self.recall_level,
        )

    def compute(self) -> Tensor:
        """Return IAP over everything seen since the last reset."""
        return torch.tensor(self._compute_both()[0])


class _InstanceAP90(_InstanceAP):
    """Torchmetrics core of :class:`IAP90` (returns IAP@k)."""

    def compute(self) -> Tensor:
        """Return IAP@k (``k = recall_level``) over everything seen since the last reset."""
        return torch.tensor(self._compute_both()[1])


class IAP(AnomalibMetric, _InstanceAP):  # type: ignore[misc]
    """Instance average precision (IAP) of DeSTSeg as an anomalib metric.

    Accumulates anomaly maps and ground-truth masks over batches and computes the mean interpolated pixel precision
    over the per-instance detection thresholds (definition in :mod:`anomalib_destseg.metrics.instance_ap`). The
    logged name is ``prefix + "IAP"``, e.g. ``pixel_IAP``.

    What is kept between ``update`` calls (every state reduces correctly under DDP):

    * ``compact=False`` (default, exact): ``instance_scores``, one value per ground-truth instance; ``positive_scores``,
      the anomaly score of every defect pixel; ``negative_scores``, that of every other pixel (all flat tensors,
      ``dist_reduce_fx="cat"``). Scores keep their own precision (float32 for float32/float16 maps): 4 bytes per
      pixel, the same order as anomalib's pixel AUROC/AUPR. The masks themselves are not kept. The result equals
      :func:`instance_average_precision` on all the data at once exactly.
    * ``compact=True``: scores are first rounded to float16. Kept are ``positive_hist`` and ``negative_hist``, the
      number of defect / other pixels at each of the 65,536 float16 values (two int64 tensors, 1 MiB in all whatever
      the data set size, ``"sum"``), and ``instance_scores``, the float16 bin of each instance score (``"cat"``).
      Rounding is monotone, so instance scores and pixel counts are exactly those of the float16-rounded maps and the
      result is exactly the IAP of those maps. It differs from the float32 value only where distinct scores share a
      float16 value (relative spacing 2**-11, e.g. about 5e-4 for scores in [0.5, 1]). Scores beyond +-65504
      saturate to +-inf (with a warning).

    ``compute`` returns a scalar tensor; if no ground-truth instance was seen it warns and returns ``nan`` (whereas
    :func:`instance_average_precision` raises).

    Args:
        fields: Batch fields holding the anomaly maps and the masks. Defaults to ``("anomaly_map", "gt_mask")``.
        prefix: Prefix of the logged name. Defaults to ``""``; use ``"pixel_"`` like anomalib's pixel metrics.
        strict: If ``False``, batches lacking a field (e.g. ``gt_mask is None``) are skipped and ``compute`` returns
            ``None`` when nothing was seen, like anomalib's pixel metrics. Defaults to ``True`` (anomalib's default).
        coverage: Share of an instance that must be covered. Defaults to ``0.5``.
        recall_level: ``k`` of ``IAP@k``, used by :class:`IAP90`. Defaults to ``0.9``.
        compact: Keep float16 histograms instead of every pixel score. Defaults to ``False``.
        **kwargs: Passed to :class:`torchmetrics.Metric` (e.g. ``compute_on_cpu``).

    Example:
        >>> from anomalib.data import ImageBatch
        >>> from anomalib.metrics import Evaluator
        >>> metric = IAP(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False)
        >>> batch = ImageBatch(
        ...     image=torch.rand(1, 3, 3, 3),
        ...     anomaly_map=torch.tensor([[[0.9, 0.8, 0.1], [0.2, 0.1, 0.1], [0.1, 0.1, 0.7]]]),
        ...     gt_mask=torch.tensor([[[1, 1, 0], [0, 0, 0], [0, 0, 1]]], dtype=torch.bool),
        ... )
        >>> metric.update(batch)
        >>> metric.name, metric.compute()
        ('pixel_IAP', tensor(1.))
        >>> evaluator = Evaluator(test_metrics=[metric])  # logs "pixel_IAP" at the end of testing

    """

    default_fields = ("anomaly_map", "gt_mask")


class IAP90(AnomalibMetric, _InstanceAP90):  # type: ignore[misc]
    """Instance average precision at 90 % recall (IAP@90) of DeSTSeg as an anomalib metric.

    The interpolated pixel precision at the first instance threshold whose instance recall reaches ``recall_level``
    (0.9 by default; the logged name stays ``prefix + "IAP90"`` whatever ``recall_level`` is). Arguments, kept state
    (memory), DDP behaviour and the no-instance behaviour are those of :class:`IAP`.

    Example:
        >>> from anomalib.data import ImageBatch
        >>> metric = IAP90(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False)
        >>> batch = ImageBatch(
        ...     image=torch.rand(1, 3, 3, 3),
        ...     anomaly_map=torch.tensor([[[0.9, 0.8, 0.1], [0.2, 0.1, 0.1], [0.1, 0.1, 0.7]]]),
        ...     gt_mask=torch.tensor([[[1, 1, 0], [0, 0, 0], [0, 0, 1]]], dtype=torch.bool),
        ... )
        >>> metric.update(batch)
        >>> metric.name, metric.compute()
        ('pixel_IAP90', tensor(1.))

    """

    default_fields = ("anomaly_map", "gt_mask")


InstanceAP = IAP
"""Alias of :class:`IAP` (the class name stays ``IAP``, so the logged name is unchanged)."""

InstanceAP90 = IAP90
"""Alias of :class:`IAP90`."""
