"""Fast CPU inference for trained models: PyTorch channels-last / bf16, OpenVINO fp32 / bf16 / INT8.

Every variant takes ``[B, 3, H, W]`` images in ``[0, 1]`` and returns anomalib's ``InferenceBatch``, like the
Lightning model's forward (and its exports). ``benchmarks/cpu_speed.py`` measures their speed and accuracy cost.

Example:
    >>> from anomalib_destseg.inference import VARIANTS, build_variant
    >>> "openvino_int8" in VARIANTS
    True
    >>> fast = build_variant("channels_last_bf16", trained_model)  # doctest: +SKIP

"""

from .openvino_core import shared_core
from .openvino_cpu import OpenVINOModel, export_openvino
from .torch_cpu import CPUInferenceModel
from .variants import VARIANTS, Variant, build_variant, get_variant, openvino_ir_path

__all__ = [
    "VARIANTS",
    "CPUInferenceModel",
    "OpenVINOModel",
    "Variant",
    "build_variant",
    "export_openvino",
    "get_variant",
    "openvino_ir_path",
    "shared_core",
]
