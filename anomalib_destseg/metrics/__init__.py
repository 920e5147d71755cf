"""Metrics of the DeSTSeg paper as anomalib metrics, and the evaluator DeSTSeg uses by default.

- :func:`instance_average_precision`: instance average precision (IAP) and IAP@90 of a whole data set.
- :class:`IAP`, :class:`IAP90`: the same as anomalib metrics (logged as ``pixel_IAP`` / ``pixel_IAP90`` with
  ``prefix="pixel_"``).
- :func:`paper_evaluator`: anomalib's default test metrics plus pixel AP, AUPRO and IAP / IAP@90, on raw scores;
  optionally the same ranking metrics of the models' second anomaly map, prefixed (``DeST_image_AUROC``, ...).
- :class:`RawScorePostProcessor`, :class:`PaperEvaluator`: how raw scores reach the metrics (see :mod:`.raw_scores`).

Example:
    >>> from anomalib_destseg.metrics import paper_evaluator
    >>> evaluator = paper_evaluator()
    >>> [metric.name for metric in evaluator.test_metrics]  # doctest: +NORMALIZE_WHITESPACE
    ['image_AUROC', 'image_F1Score', 'pixel_AUROC', 'pixel_F1Score', 'pixel_AUPR', 'pixel_AUPRO', 'pixel_IAP',
     'pixel_IAP90']

"""

from anomalib.metrics import AUPR, AUPRO, AUROC, F1Score

from anomalib_destseg.components.maps import METRIC_PREFIXES, check_map_name, map_fields

from .instance_ap import compute_instance_scores, instance_average_precision, label_instances
from .instance_ap_metric import IAP, IAP90, InstanceAP, InstanceAP90
from .raw_scores import RAW_ANOMALY_MAP, RAW_PRED_SCORE, PaperEvaluator, RawScorePostProcessor, keep_raw_scores

__all__ = [
    "IAP",
    "IAP90",
    "InstanceAP",
    "InstanceAP90",
    "PaperEvaluator",
    "RawScorePostProcessor",
    "compute_instance_scores",
    "instance_average_precision",
    "keep_raw_scores",
    "label_instances",
    "paper_evaluator",
]


def paper_evaluator(
    compact_iap: bool = False,
    compute_on_cpu: bool = True,
    raw_scores: bool = True,
    second_map: str | None = None,
) -> PaperEvaluator:
    """Build the evaluator with the metrics reported in the DeSTSeg paper, computed as the paper computes them.

    Test metrics and their logged names:

    - ``image_AUROC``, ``image_F1Score``, ``pixel_AUROC``, ``pixel_F1Score``: anomalib's defaults
      (``AnomalibModule.configure_evaluator``);
    - ``pixel_AUPR``: pixel-level average precision (anomalib's ``AUPR`` over all pixels);
    - ``pixel_AUPRO``: anomalib's ``AUPRO`` with ``fpr_limit=0.3``;
    - ``pixel_IAP``, ``pixel_IAP90``: instance average precision and IAP@90 (:class:`IAP`, :class:`IAP90`).

    The ranking metrics (AUROC, AUPR, AUPRO, IAP) read the raw scores and maps (``raw_pred_score``,
    ``raw_anomaly_map``, kept by :class:`RawScorePostProcessor`), as the paper does; the F1 scores read the
    thresholded labels and masks, which are the same whether thresholded raw or normalised. All pixel metrics use
    ``strict=False``: batches without ``gt_mask`` are skipped, as in anomalib.

    Args:
        compact_iap: Let IAP / IAP@90 keep 1 MiB float16 histograms instead of every pixel score (the result is then
            exact for float16-rounded maps, see :class:`IAP`). Defaults to ``False`` (exact).
        compute_on_cpu: Passed to :class:`anomalib.metrics.Evaluator`. Defaults to ``True``.
        raw_scores: Compute the ranking metrics on raw scores (``True``, the paper) or on the post-processed ones
            (``False``, anomalib's default: normalised and clamped to [0, 1]).
        second_map: Name of the DeSTSeg / PFADSeg map that is not the output (``"dest"`` or ``"segmentation"``, see
            :mod:`anomalib_destseg.components.maps`), or ``None``. Adds six metrics of that map, read from the batch's
            ``<name>_pred_score`` / ``<name>_anomaly_map`` (always raw: no threshold or normalisation exists for
            it) and named with its prefix: ``DeST_image_AUROC``, ``DeST_pixel_AUROC``, ``DeST_pixel_AUPR``,
            ``DeST_pixel_AUPRO``, ``DeST_pixel_IAP``, ``DeST_pixel_IAP90`` (or ``Seg_...``). No F1 scores: the
            thresholds belong to the output map.

    Returns:
        A :class:`PaperEvaluator` with no validation metrics and the eight (fourteen) test metrics above.

    Raises:
        ValueError: If ``second_map`` names no map.

    Example:
        >>> evaluator = paper_evaluator()
        >>> evaluator.test_metrics[-1].name, evaluator.test_metrics[0].fields
        ('pixel_IAP90', ['raw_pred_score', 'gt_label'])
        >>> [metric.name for metric in paper_evaluator(second_map="dest").test_metrics][8:10]
        ['DeST_image_AUROC', 'DeST_pixel_AUROC']

    """
    score, anomaly_map = (RAW_PRED_SCORE, RAW_ANOMALY_MAP) if raw_scores else ("pred_score", "anomaly_map")
    pixel_fields = [anomaly_map, "gt_mask"]
    test_metrics = [
        AUROC(fields=[score, "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=pixel_fields, prefix="pixel_", strict=False),
        F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
        AUPR(fields=pixel_fields, prefix="pixel_", strict=False),
        AUPRO(fields=pixel_fields, prefix="pixel_", strict=False, fpr_limit=0.3),
        IAP(fields=pixel_fields, prefix="pixel_", strict=False, compact=compact_iap),
        IAP90(fields=pixel_fields, prefix="pixel_", strict=False, compact=compact_iap),
    ]
    if second_map is not None:
        second_score, second_anomaly_map = map_fields(check_map_name(second_map, "second_map"))
        prefix = METRIC_PREFIXES[second_map]
        second_pixel_fields = [second_anomaly_map, "gt_mask"]
        test_metrics += [
            AUROC(fields=[second_score, "gt_label"], prefix=f"{prefix}image_"),
            AUROC(fields=second_pixel_fields, prefix=f"{prefix}pixel_", strict=False),
            AUPR(fields=second_pixel_fields, prefix=f"{prefix}pixel_", strict=False),
            AUPRO(fields=second_pixel_fields, prefix=f"{prefix}pixel_", strict=False, fpr_limit=0.3),
            IAP(fields=second_pixel_fields, prefix=f"{prefix}pixel_", strict=False, compact=compact_iap),
            IAP90(fields=second_pixel_fields, prefix=f"{prefix}pixel_", strict=False, compact=compact_iap),
        ]
    return PaperEvaluator(test_metrics=test_metrics, compute_on_cpu=compute_on_cpu, second_map=second_map)
