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


_NEG_ZERO_KEY, _POS_ZERO_KEY = 32767, 32768
_NEG_INF_KEY, _POS_INF_KEY = 32767 - 0x7C00, 32768 + 0x7C00


def _half_keys(scores: Tensor) -> Tensor:
    """Order-preserving bin index in ``[0, 65535]`` of each score rounded to float16.

    ``-0.0`` and ``+0.0`` get the adjacent keys 32767 and 32768 (merge them before comparing).
    """
    bits = scores.to(torch.float16).view(torch.int16).to(torch.int32)
    # Non-negative halves (bits 0..0x7C00 as int16) -> bits ^ 0x8000 = 32768 + bits; negative halves (int16 bits =
    # magnitude - 32768 < 0, so bits >> 15 = -1) -> bits ^ -1 = -1 - bits = 32767 - magnitude.
    return bits ^ ((bits >> 15) | 0x8000)


def _half_histogram(scores: Tensor) -> Tensor:
    """Number of ``scores`` (float16) at each key of :func:`_half_keys`, as an int64 tensor of 65,536 counts.

    Counts the raw 16-bit patterns (numpy's bincount on the CPU: several times faster than torch's), then reorders the
    65,536 bins: raw pattern ``u < 0x8000`` (non-negative) has key ``u + 32768``, ``u >= 0x8000`` has key ``65535 - u``.
    """
    bits = scores.reshape(-1).view(torch.int16)
    if bits.device.type == "cpu":
        raw = torch.from_numpy(np.bincount(bits.numpy().view(np.uint16), minlength=_NUM_HALF_BINS).astype(np.int64))
    else:
        raw = torch.bincount(bits.to(torch.int32) & 0xFFFF, minlength=_NUM_HALF_BINS)
    return torch.cat([raw[_POS_ZERO_KEY:].flip(0), raw[:_POS_ZERO_KEY]])


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
            self.add_state("pixel_hist", default=torch.zeros(_NUM_HALF_BINS, dtype=torch.long), dist_reduce_fx="sum")
        else:
            self.add_state("positive_scores", default=[], dist_reduce_fx="cat")
            self.add_state("pixel_scores", default=[], dist_reduce_fx="cat")

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
        positive_scores = _masked(anomaly_maps, gt_masks)
        scores = _instance_scores(positive_scores, gt_masks, self.coverage)
        if self.compact:
            pixel_hist = _half_histogram(anomaly_maps)
            positive_hist = _half_histogram(positive_scores)
            for hist in (pixel_hist, positive_hist):  # -0.0 == +0.0
                hist[_POS_ZERO_KEY] += hist[_NEG_ZERO_KEY]
                hist[_NEG_ZERO_KEY] = 0
            if pixel_hist[_NEG_INF_KEY] or pixel_hist[_POS_INF_KEY]:
                warnings.warn(
                    "IAP(compact=True): scores at or beyond the float16 range (|score| > 65504) count as +-inf.",
                    stacklevel=2,
                )
            self.pixel_hist += pixel_hist.to(self.pixel_hist)
            self.positive_hist += positive_hist.to(self.positive_hist)
            keys = _half_keys(scores)
            keys[keys == _NEG_ZERO_KEY] = _POS_ZERO_KEY
            self.instance_scores.append(keys.to(self.pixel_hist.device))
        else:
            device = self.device
            self.instance_scores.append(scores.to(device))
            self.positive_scores.append(positive_scores.to(device))
            self.pixel_scores.append(anomaly_maps.reshape(-1).to(device))

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
            # true / predicted positives at a bin = number of defect / all pixels in that bin or above
            true_pos = self.positive_hist.flip(0).cumsum(0).flip(0)
            predicted_pos = self.pixel_hist.flip(0).cumsum(0).flip(0)
            keys = torch.sort(instance_scores.to(device=true_pos.device, dtype=torch.long), descending=True).values
            return _summarise(_precision(true_pos[keys], predicted_pos[keys]), self.recall_level)
        return _iap_exact(
            instance_scores,
            dim_zero_cat(self.positive_scores),
            dim_zero_cat(self.pixel_scores),
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

    * ``compact=False`` (default, exact): ``instance_scores``, one value per ground-truth instance;
      ``positive_scores``, the anomaly score of every defect pixel; ``pixel_scores``, the anomaly score of every pixel
      (all flat tensors, ``dist_reduce_fx="cat"``; the masks themselves are not kept). Scores keep their own precision
      (float32 for float32/float16 maps): about 4 bytes per pixel (plus 4 per defect pixel), the same order as
      anomalib's pixel AUROC/AUPR. The result equals :func:`instance_average_precision` on all the data at once.
    * ``compact=True``: scores are first rounded to float16. Kept are ``positive_hist`` and ``pixel_hist``, the
      number of defect / all pixels at each of the 65,536 float16 values (two int64 tensors, 1 MiB in all whatever
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
