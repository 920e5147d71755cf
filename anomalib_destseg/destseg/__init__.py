"""DeSTSeg: segmentation-guided denoising student-teacher anomaly detection (CVPR 2023)."""

from .lightning_model import DeSTSeg
from .torch_model import DeSTSegModel

__all__ = ["DeSTSeg", "DeSTSegModel"]
