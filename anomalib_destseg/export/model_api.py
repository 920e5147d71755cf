"""OpenVINO Model API metadata in every OpenVINO export, so that ``Model.create_model(xml)`` reads it as it is.

OpenVINO Model API (``openvino-model-api``) wraps an IR as the wrapper named by its ``model_info/model_type``
runtime attribute, and sets the wrapper's parameters from the other ``model_info`` attributes. anomalib 2.7 writes
none, and without them a fixed-size export is fed 0-255 pixels (Model API then embeds its own preprocessing, which
scales only when told). :class:`ModelApiMetadataMixin` adds them after anomalib's ``to_openvino``, for every
variant (f32, FP16, INT8) and for dynamic and fixed input sizes; anomalib's own inferencers ignore them.

What :class:`model_api.models.AnomalyDetection` (0.4.7) reads and why each value is what it is
(:func:`model_api_info`):

- ``model_type``: ``AnomalyDetection``, the wrapper for anomalib exports.
- ``scale_values`` ``255 255 255``, ``mean_values`` ``0 0 0``: the export takes ``[0, 1]`` images (it normalises
  inside). For a fixed-size export, Model API embeds resize, ``float(pixel - mean) / scale`` into the graph and
  feeds 8-bit images through it; for a dynamic one it divides 8-bit images by 255 itself and ignores both.
- ``reverse_input_channels`` ``False``: the export takes RGB. A dynamic export's images reach the model as they are
  (the wrapper never swaps channels there), so swapping in fixed-size exports only would make the two disagree:
  give both RGB images (``cv2.imread`` returns BGR).
- ``resize_type`` ``standard`` and ``interpolation_mode`` ``LINEAR``: a fixed-size export receives images
  stretched bilinearly to its size, as the pre-processor's ``Resize`` does (without its antialiasing: Model API
  has none). A dynamic export resizes inside, with antialiasing.
- ``image_threshold``, ``pixel_threshold``, ``normalization_scale``: the export's own post-processor already
  normalises (``(raw - threshold) / (max - min) + 0.5``, clamped) and thresholds, and outputs ``pred_score``,
  ``pred_label``, ``anomaly_map`` and ``pred_mask``, which the wrapper then takes as they are. The values written
  are the thresholds the post-processor applies to those outputs (``1 - sensitivity``: 0.5 by default) and a scale
  of 1, so that anything reading them describes the outputs correctly.
- ``labels`` ``Normal Anomaly`` and ``task`` ``segmentation`` (the exports output masks; ``detection`` would add
  boxes).

Example:
    >>> engine.export(model, export_type="openvino", input_size=(256, 256))  # doctest: +SKIP
    >>> from model_api.models import Model
    >>> result = Model.create_model("weights/openvino/model.xml")(rgb_image)  # doctest: +SKIP
    >>> result.pred_score, result.pred_label, result.anomaly_map.shape  # doctest: +SKIP
    (0.83, 'True', (900, 900))

"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from anomalib_destseg.inference.openvino_core import shared_core

MODEL_INFO = "model_info"
"""The ``rt_info`` section Model API reads its parameters from."""
LABELS = ("Normal", "Anomaly")


def model_api_info(module: Any) -> dict[str, str]:
    """The ``model_info`` entries (as Model API's strings) for an export of ``module`` (an ``AnomalibModule``).

    Example:
        >>> from anomalib.post_processing import PostProcessor
        >>> class Module:
        ...     post_processor = PostProcessor()
        >>> info = model_api_info(Module())
        >>> info["model_type"], info["image_threshold"], info["normalization_scale"], info["reverse_input_channels"]
        ('AnomalyDetection', '0.5', '1.0', 'False')

    """
    info = {
        "model_type": "AnomalyDetection",
        "labels": " ".join(LABELS),
        "task": "segmentation",
        "scale_values": "255 255 255",
        "mean_values": "0 0 0",
        "reverse_input_channels": "False",
        "resize_type": "standard",
        "interpolation_mode": "LINEAR",
    }
    post_processor = getattr(module, "post_processor", None)
    if post_processor:  # without one, the export outputs raw values that nothing thresholds: Model API's defaults
        # anomalib's PostProcessor.forward (what is exported) thresholds at the normalised thresholds, whether or
        # not it normalised.
        info["image_threshold"] = repr(float(post_processor.normalized_image_threshold))
        info["pixel_threshold"] = repr(float(post_processor.normalized_pixel_threshold))
        info["normalization_scale"] = "1.0"
    return info


def write_model_api_info(xml_path: Path | str, info: dict[str, str]) -> None:
    """Add ``info`` to the ``model_info`` runtime attributes of the IR ``xml_path`` (its ``.bin`` is unchanged).

    The IR is read and written again with OpenVINO (the ``.xml`` is replaced only once the new one is complete);
    weights keep their type (FP16 and INT8 stay so).

    Example:
        >>> write_model_api_info("model.xml", {"model_type": "AnomalyDetection"})  # doctest: +SKIP

    """
    import openvino as ov

    xml_path = Path(xml_path)
    model = shared_core().read_model(xml_path)
    for name, value in info.items():
        model.set_rt_info(value, [MODEL_INFO, name])
    handle, temporary = tempfile.mkstemp(suffix=".xml", dir=xml_path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        # compress_to_fp16=False: weights stay as they were saved (FP16 exports keep their FP16 constants).
        ov.save_model(model, temporary, compress_to_fp16=False)
        temporary.replace(xml_path)
        temporary.with_suffix(".bin").replace(xml_path.with_suffix(".bin"))
    finally:
        temporary.unlink(missing_ok=True)
        temporary.with_suffix(".bin").unlink(missing_ok=True)


def model_api_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (8-bit ``[H, W, C]``) resized to ``size`` (height, width) as Model API resizes for fixed inputs.

    Model API (``resize_type`` ``standard``, ``interpolation_mode`` ``LINEAR``) stretches 8-bit images with
    OpenVINO's bilinear ``Interpolate`` on the 8-bit values, inside the model, before scaling them; it has no
    antialiasing. This runs that operation alone, on the CPU, so that another runtime (e.g. anomalib's
    ``OpenVINOInferencer``) can be given the very image a fixed-size export sees under Model API.

    Example:
        >>> image = np.zeros((80, 96, 3), dtype=np.uint8)
        >>> model_api_resize(image, (64, 64)).shape
        (64, 64, 3)

    """
    import openvino as ov
    from openvino import opset10

    height, width = (int(side) for side in size)
    pixels = opset10.parameter([1, *image.shape], ov.Type.u8)
    resized = opset10.interpolate(
        pixels,
        [height, width],
        scales=np.array([0.0, 0.0], dtype=np.float32),
        axes=[1, 2],
        mode="linear",
        shape_calculation_mode="sizes",
    )
    compiled = shared_core().compile_model(ov.Model([resized], [pixels]), "CPU")
    return compiled(image[None])[0][0]


class ModelApiMetadataMixin:
    """``to_openvino`` that writes Model API's metadata (:func:`model_api_info`) into the saved IR.

    Mix in before ``AnomalibModule``; ``Engine.export`` and ``anomalib export`` call ``to_openvino``.
    """

    def to_openvino(self, *args: Any, **kwargs: Any) -> Path:
        """Export with anomalib's ``to_openvino`` (same arguments), then add the metadata; returns the ``.xml`` path."""
        xml_path = super().to_openvino(*args, **kwargs)
        write_model_api_info(xml_path, model_api_info(self))
        return xml_path
