"""Named CPU inference variants, each a callable ``images -> InferenceBatch`` built from one trained model.

| name | what runs |
|---|---|
| ``torch_fp32`` | the model's own forward in PyTorch, float32 (the reference for accuracy) |
| ``torch_bf16`` | PyTorch under bfloat16 autocast |
| ``channels_last`` | PyTorch float32, channels-last layout |
| ``channels_last_bf16`` | PyTorch, channels-last and bfloat16 autocast |
| ``torch_compile`` | PyTorch float32, ``torch.compile`` with frozen weights (BatchNorm folded; needs a C++ compiler) |
| ``torch_compile_bf16`` | the same under bfloat16 autocast |
| ``openvino_fp32`` | OpenVINO IR, ``INFERENCE_PRECISION_HINT=f32`` |
| ``openvino_bf16`` | OpenVINO IR with the CPU plugin's default precision (bf16 on CPUs with AVX-512 BF16/AMX) |
| ``openvino_int8`` | OpenVINO IR quantised to INT8 by NNCF post-training quantisation (needs calibration data) |

Example:
    >>> sorted(VARIANTS)[:3]
    ['channels_last', 'channels_last_bf16', 'openvino_bf16']
    >>> run = build_variant("channels_last", model)  # doctest: +SKIP
    >>> run(images).anomaly_map.shape  # doctest: +SKIP
    torch.Size([8, 1, 256, 256])

"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from anomalib.data import InferenceBatch

from .openvino_cpu import OpenVINOModel, export_openvino
from .torch_cpu import CPUInferenceModel

if TYPE_CHECKING:
    from anomalib.data import AnomalibDataModule
    from torch import nn


@dataclass(frozen=True)
class Variant:
    """How one variant runs.

    Attributes:
        name: Registry name.
        backend: ``"torch"`` or ``"openvino"``.
        description: One line for reports.
        channels_last: PyTorch: channels-last layout.
        bf16: PyTorch: bfloat16 autocast.
        torch_compile: PyTorch: ``torch.compile`` with inductor's weight freezing.
        precision: OpenVINO: ``INFERENCE_PRECISION_HINT``, ``None`` for the plugin's default.
        int8: OpenVINO: use the INT8 (NNCF PTQ) IR.

    """

    name: str
    backend: str
    description: str
    channels_last: bool = False
    bf16: bool = False
    torch_compile: bool = False
    precision: str | None = "f32"
    int8: bool = False


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant("torch_fp32", "torch", "PyTorch fp32, NCHW (the model's forward)"),
        Variant("torch_bf16", "torch", "PyTorch bf16 autocast, NCHW", bf16=True),
        Variant("channels_last", "torch", "PyTorch fp32, channels-last", channels_last=True),
        Variant("channels_last_bf16", "torch", "PyTorch bf16 autocast, channels-last", channels_last=True, bf16=True),
        Variant("torch_compile", "torch", "PyTorch fp32, torch.compile with frozen weights", torch_compile=True),
        Variant(
            "torch_compile_bf16", "torch", "PyTorch bf16 autocast, torch.compile, frozen", bf16=True, torch_compile=True
        ),
        Variant("openvino_fp32", "openvino", "OpenVINO IR, f32 precision hint", precision="f32"),
        Variant("openvino_bf16", "openvino", "OpenVINO IR, CPU plugin default precision (bf16 here)", precision=None),
        Variant("openvino_int8", "openvino", "OpenVINO IR quantised to INT8 (NNCF PTQ)", precision=None, int8=True),
    )
}


def get_variant(name: str) -> Variant:
    """Look a variant up by name; a ``ValueError`` lists the known names."""
    try:
        return VARIANTS[name]
    except KeyError:
        msg = f"Unknown inference variant {name!r}; known: {', '.join(VARIANTS)}."
        raise ValueError(msg) from None


def openvino_ir_path(export_root: str | Path, int8: bool) -> Path:
    """Where :func:`build_variant` keeps the fp32 or INT8 IR under ``export_root``."""
    return Path(export_root) / ("int8" if int8 else "fp32") / "weights" / "openvino" / "model.xml"


def build_variant(
    name: str,
    model: nn.Module,
    export_root: str | Path | None = None,
    input_size: tuple[int, int] | None = (256, 256),
    int8_datamodule: AnomalibDataModule | None = None,
) -> Callable[[torch.Tensor], InferenceBatch]:
    """Return a callable running ``model`` as variant ``name``.

    Args:
        name: A key of :data:`VARIANTS`.
        model: Trained anomalib model.
        export_root: Folder for OpenVINO IRs (needed by OpenVINO variants); an IR already there is reused.
        input_size: Static ``(H, W)`` for the OpenVINO export (batch is dynamic); ``None`` for dynamic H, W.
        int8_datamodule: Calibration data for ``openvino_int8`` (images of ``input_size``).

    Returns:
        ``images [B, 3, H, W] in [0, 1] -> InferenceBatch``.

    Raises:
        ValueError: For an unknown name, or an OpenVINO variant without ``export_root`` (or INT8 without data).

    """
    variant = get_variant(name)
    if variant.backend == "torch":
        return CPUInferenceModel(
            model, channels_last=variant.channels_last, bf16=variant.bf16, torch_compile=variant.torch_compile
        )
    if export_root is None:
        msg = f"Variant {name} needs export_root (a folder for the OpenVINO IR)."
        raise ValueError(msg)
    path = openvino_ir_path(export_root, variant.int8)
    if not path.is_file():
        if variant.int8 and int8_datamodule is None:
            msg = "Variant openvino_int8 needs int8_datamodule (calibration images) to quantise the model."
            raise ValueError(msg)
        exported = export_openvino(
            model, path.parents[2], input_size=input_size, int8_datamodule=int8_datamodule if variant.int8 else None
        )
        if exported != path:
            msg = f"OpenVINO export wrote {exported}, expected {path}."
            raise RuntimeError(msg)
    return OpenVINOModel(path, precision=variant.precision)
