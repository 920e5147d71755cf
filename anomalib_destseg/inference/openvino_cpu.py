"""OpenVINO on the CPU: export (fp32 IR, or INT8 by NNCF post-training quantisation) and run with a chosen precision.

anomalib exports OpenVINO IR through ONNX (``Engine.export(model, "openvino", ...)``). How the CPU then computes
is a compile-time choice, not a property of the IR:

- ``precision="f32"``: ``INFERENCE_PRECISION_HINT=f32``, matches PyTorch fp32 to about 1e-6.
- ``precision=None``: OpenVINO's default, which is bf16 on CPUs with AVX-512 BF16 or AMX (this machine) and f32
  elsewhere. Faster, at an accuracy cost.
- An INT8 IR (``export_openvino(..., int8_datamodule=dm)``, anomalib's ``CompressionType.INT8_PTQ``: NNCF
  calibrates activation ranges on the datamodule's validation images) runs quantised convolutions in int8
  (VNNI); the remaining operations use the precision hint.

:class:`OpenVINOModel` returns anomalib's ``InferenceBatch`` (torch tensors) like the Lightning model, and checks the
input shape against the compiled model first, so an input the export cannot take fails with a clear
``ValueError``.

Example:
    >>> xml = export_openvino(model, "exports", input_size=(256, 256))  # doctest: +SKIP
    >>> fast = OpenVINOModel(xml, precision=None)  # doctest: +SKIP
    >>> fast.inference_precision  # doctest: +SKIP
    'bf16'
    >>> fast(torch.rand(8, 3, 256, 256)).anomaly_map.shape  # doctest: +SKIP
    torch.Size([8, 1, 256, 256])

"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from anomalib.data import InferenceBatch

from .openvino_core import shared_core

if TYPE_CHECKING:
    from anomalib.data import AnomalibDataModule
    from anomalib.models import AnomalibModule

logger = logging.getLogger(__name__)

FIELDS = InferenceBatch._fields


def export_openvino(
    model: AnomalibModule,
    export_root: str | Path,
    input_size: tuple[int, int] | None = None,
    int8_datamodule: AnomalibDataModule | None = None,
    model_file_name: str = "model",
) -> Path:
    """Export ``model`` to OpenVINO IR with anomalib's ``Engine.export``; INT8 when given calibration data.

    Args:
        model: Trained anomalib model.
        export_root: Folder; the IR goes to ``<export_root>/weights/openvino/<model_file_name>.xml``.
        input_size: Static ``(H, W)`` of the exported input (batch stays dynamic); ``None`` for dynamic H, W.
        int8_datamodule: If given, quantise to INT8 with NNCF post-training quantisation
            (``CompressionType.INT8_PTQ``), calibrated on this datamodule's validation images. Its images must fit
            ``input_size`` (e.g. give it ``val_augmentations=Resize(input_size)``).
        model_file_name: Base name of the IR files.

    Returns:
        Path of the ``.xml`` file.

    """
    from anomalib.deploy import CompressionType, ExportType
    from anomalib.engine import Engine

    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=str(export_root))
    compression = CompressionType.INT8_PTQ if int8_datamodule is not None else None
    return engine.export(
        model,
        ExportType.OPENVINO,
        export_root=export_root,
        model_file_name=model_file_name,
        input_size=input_size,
        compression_type=compression,
        datamodule=int8_datamodule,
        # torch's exporter implements opset 18; anomalib's default 14 only adds a failing down-conversion.
        onnx_kwargs={"opset_version": 18},
    )


class OpenVINOModel:
    """A compiled OpenVINO model that takes ``[B, 3, H, W]`` images in ``[0, 1]`` and returns an ``InferenceBatch``.

    Args:
        path: ``.xml`` (with its ``.bin``) or ``.onnx`` file.
        precision: ``INFERENCE_PRECISION_HINT`` (``"f32"``, ``"bf16"``, ``"f16"``) or ``None`` for OpenVINO's
            default (bf16 where the CPU supports it).
        device: OpenVINO device name.
        config: More compile properties (e.g. ``{"PERFORMANCE_HINT": "THROUGHPUT"}``).

    Example:
        >>> model = OpenVINOModel("exports/weights/openvino/model.xml", precision="f32")  # doctest: +SKIP
        >>> model(torch.rand(1, 3, 256, 256)).pred_score.shape  # doctest: +SKIP
        torch.Size([1])

    """

    def __init__(
        self,
        path: str | Path,
        precision: str | None = "f32",
        device: str = "CPU",
        config: dict[str, Any] | None = None,
    ) -> None:
        properties = dict(config or {})
        if precision is not None:
            properties["INFERENCE_PRECISION_HINT"] = precision
        core = shared_core()  # not a Core each: see openvino_core.py
        self.path = Path(path)
        self.compiled = core.compile_model(core.read_model(str(path)), device, properties)
        self.input_shape = self.compiled.input(0).get_partial_shape()
        self.output_names = [output.get_any_name() for output in self.compiled.outputs]
        self._request = self.compiled.create_infer_request()

    @property
    def inference_precision(self) -> str:
        """The precision OpenVINO actually uses for floating-point operations (e.g. ``"f32"``, ``"bf16"``)."""
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        return precision.to_string() if hasattr(precision, "to_string") else str(precision)

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Raise a ``ValueError`` unless a tensor of ``shape`` fits the compiled model's input."""
        import openvino as ov

        if len(shape) != self.input_shape.rank.get_length() or not self.input_shape.compatible(ov.PartialShape(shape)):
            sizes = [str(dim) if dim.is_static else "any" for dim in self.input_shape]
            msg = (
                f"{self.path.name} takes images of shape [{', '.join(sizes)}] (batch, channels, height, width), got "
                f"{list(shape)}. Resize the images to the exported size, or export with input_size=None for any size."
            )
            raise ValueError(msg)

    def run_numpy(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run on a float32 ``[B, 3, H, W]`` array; return the outputs by name (``pred_score``, ``anomaly_map``...)."""
        self.check_input(tuple(images.shape))
        results = self._request.infer({0: np.ascontiguousarray(images, dtype=np.float32)})
        return {name: np.asarray(results[index]) for index, name in enumerate(self.output_names)}

    def __call__(self, images: torch.Tensor | np.ndarray) -> InferenceBatch:
        """Predict ``[B, 3, H, W]`` images in ``[0, 1]``; returns torch tensors like the Lightning model."""
        array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        outputs = self.run_numpy(array)
        return InferenceBatch(**{name: torch.from_numpy(outputs[name].copy()) for name in FIELDS if name in outputs})
