"""What DeSTSeg and PFADSeg add to anomalib's export: checks, exports without autograd, OpenVINO Model API metadata."""

from .checks import ExportChecksMixin, UntrainedExportWarning, multiple_of_32_shapes
from .model_api import ModelApiMetadataMixin, model_api_info, model_api_resize, write_model_api_info

__all__ = [
    "ExportChecksMixin",
    "ModelApiMetadataMixin",
    "UntrainedExportWarning",
    "model_api_info",
    "model_api_resize",
    "multiple_of_32_shapes",
    "write_model_api_info",
]
