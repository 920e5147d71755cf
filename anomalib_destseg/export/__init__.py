"""What DeSTSeg and PFADSeg add to anomalib's export: checks of training and input size, exports without autograd."""

from .checks import ExportChecksMixin, UntrainedExportWarning, multiple_of_32_shapes

__all__ = ["ExportChecksMixin", "UntrainedExportWarning", "multiple_of_32_shapes"]
