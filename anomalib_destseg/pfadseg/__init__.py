"""PFADSeg: teacher-encoder / student-decoder denoising guided segmentation (arXiv 2501.12104), design inferred."""

from .fusion import AdaptiveLevelFusion, MultiScaleFusionBottleneck
from .lightning_model import PFADSeg
from .torch_model import PFADSegModel

__all__ = ["AdaptiveLevelFusion", "MultiScaleFusionBottleneck", "PFADSeg", "PFADSegModel"]
