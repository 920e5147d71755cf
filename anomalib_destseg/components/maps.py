"""The two anomaly maps of DeSTSeg and PFADSeg, by name: what they are called in arguments, batches and metrics.

- ``"segmentation"``: the segmentation network's probability map (the reference's ``output_segmentation``, the
  paper's "DeSTSeg" results). The models output it by default.
- ``"dest"``: the teacher-student map (the reference's ``output_de_st``, the paper's "DeST" results): per feature
  level the cosine distance between the L2-normalised student and teacher features, resized to the finest level
  and multiplied over the levels (:func:`~anomalib_destseg.components.feature_ops.dest_map`). It needs no
  synthetic-anomaly supervision.

The model argument ``output_map`` picks the map that becomes anomalib's ``anomaly_map`` and ``pred_score`` (and so
the thresholds, pictures and exports); in test and predict runs the other map travels in the batch as
``<name>_anomaly_map`` and ``<name>_pred_score`` (raw, never normalised), and its metrics are logged with the
prefix of :data:`METRIC_PREFIXES`.

Example:
    >>> other_map("segmentation"), map_fields("dest"), METRIC_PREFIXES["dest"]
    ('dest', ('dest_pred_score', 'dest_anomaly_map'), 'DeST_')

"""

SEGMENTATION_MAP = "segmentation"
DEST_MAP = "dest"
ANOMALY_MAPS = (SEGMENTATION_MAP, DEST_MAP)
"""Names of the two maps; the first is the default output."""

METRIC_PREFIXES = {SEGMENTATION_MAP: "Seg_", DEST_MAP: "DeST_"}
"""Prefix of the metric names of each map when it is the second map (``DeST_image_AUROC``, ``Seg_pixel_AUPR``)."""


def check_map_name(name: str, argument: str = "output_map") -> str:
    """Return ``name`` if it names one of :data:`ANOMALY_MAPS`, else raise a ``ValueError`` naming the choices.

    Example:
        >>> check_map_name("DeST")
        Traceback (most recent call last):
        ...
        ValueError: output_map must be one of 'segmentation', 'dest'; got 'DeST'.

    """
    if name not in ANOMALY_MAPS:
        msg = f"{argument} must be one of {', '.join(repr(m) for m in ANOMALY_MAPS)}; got {name!r}."
        raise ValueError(msg)
    return name


def other_map(name: str) -> str:
    """The map that is not ``name``."""
    return ANOMALY_MAPS[1 - ANOMALY_MAPS.index(check_map_name(name))]


def map_fields(name: str) -> tuple[str, str]:
    """Batch attributes ``(<name>_pred_score, <name>_anomaly_map)`` carrying map ``name`` when it is not the output."""
    check_map_name(name)
    return f"{name}_pred_score", f"{name}_anomaly_map"
