"""Instance AP (IAP) and IAP@90 as anomalib metrics, exact or with compact float16 histograms.

Data sets without any ground-truth instance have no IAP: the metrics warn and return ``nan``, so a long
``anomalib test`` on defect-free data still reports its other metrics. The definition is in :mod:`.instance_ap`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from anomalib.metrics import AnomalibMetric
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from .instance_ap import (
    _check_coverage,
    _check_recall_level,
    _iap_exact,
    _instance_scores,
    _masked,
    _precision,
    _prepare,
    _summarise,
)

__all__ = ["IAP", "IAP90", "InstanceAP", "InstanceAP90"]

_NUM_HALF_BINS = 1 << 16  # number of float16 bit patterns

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
