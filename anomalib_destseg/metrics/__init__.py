"""Metrics of the DeSTSeg paper as anomalib metrics, and the evaluator DeSTSeg uses by default.

- :func:`instance_average_precision`: instance average precision (IAP) and IAP@90 of a whole data set.
- :class:`IAP`, :class:`IAP90`: the same as anomalib metrics (logged as ``pixel_IAP`` / ``pixel_IAP90`` with
  ``prefix="pixel_"``).
- :func:`paper_evaluator`: anomalib's default test metrics plus pixel AP, AUPRO and IAP / IAP@90.

Example:
    >>> from anomalib_destseg.metrics import paper_evaluator
    >>> evaluator = paper_evaluator()
    >>> [metric.name for metric in evaluator.test_metrics]  # doctest: +NORMALIZE_WHITESPACE
    ['image_AUROC', 'image_F1Score', 'pixel_AUROC', 'pixel_F1Score', 'pixel_AUPR', 'pixel_AUPRO', 'pixel_IAP',
     'pixel_IAP90']

"""

from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Score

from .instance_ap import (
    IAP,
    IAP90,
    InstanceAP,
    InstanceAP90,
    compute_instance_scores,
    instance_average_precision,
    label_instances,
)

__all__ = [
    "IAP",
    "IAP90",
    "InstanceAP",
    "InstanceAP90",
    "compute_instance_scores",
    "instance_average_precision",
    "label_instances",
    "paper_evaluator",
]


def paper_evaluator(compact_iap: bool = False, compute_on_cpu: bool = True) -> Evaluator:
    """Build the evaluator with the metrics reported in the DeSTSeg paper.

    Test metrics and their logged names:

    - ``image_AUROC``, ``image_F1Score``, ``pixel_AUROC``, ``pixel_F1Score``: anomalib's defaults
      (``AnomalibModule.configure_evaluator``);
    - ``pixel_AUPR``: pixel-level average precision (anomalib's ``AUPR`` on ``anomaly_map`` / ``gt_mask``);
    - ``pixel_AUPRO``: anomalib's ``AUPRO`` with ``fpr_limit=0.3``;
    - ``pixel_IAP``, ``pixel_IAP90``: instance average precision and IAP@90 (:class:`IAP`, :class:`IAP90`).

    All pixel metrics use ``strict=False``: batches without ``gt_mask`` are skipped, as in anomalib.

    Args:
        compact_iap: Let IAP / IAP@90 keep 1 MiB float16 histograms instead of every pixel score (the result is then
            exact for float16-rounded maps, see :class:`IAP`). Defaults to ``False`` (exact).
        compute_on_cpu: Passed to :class:`anomalib.metrics.Evaluator`. Defaults to ``True``.

    Returns:
        An evaluator with no validation metrics and the eight test metrics above.

    Example:
        >>> evaluator = paper_evaluator()
        >>> evaluator.test_metrics[-1].name
        'pixel_IAP90'

    """
    pixel_fields = ["anomaly_map", "gt_mask"]
    test_metrics = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=pixel_fields, prefix="pixel_", strict=False),
        F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
        AUPR(fields=pixel_fields, prefix="pixel_", strict=False),
        AUPRO(fields=pixel_fields, prefix="pixel_", strict=False, fpr_limit=0.3),
        IAP(fields=pixel_fields, prefix="pixel_", strict=False, compact=compact_iap),
        IAP90(fields=pixel_fields, prefix="pixel_", strict=False, compact=compact_iap),
    ]
    return Evaluator(test_metrics=test_metrics, compute_on_cpu=compute_on_cpu)
