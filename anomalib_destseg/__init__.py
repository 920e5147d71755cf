"""anomalib-destseg: DeSTSeg and PFADSeg as anomalib models.

Example:
    >>> from anomalib_destseg import DeSTSeg
    >>> model = DeSTSeg(texture_dir="datasets/dtd/images")  # then anomalib's Engine().fit(model, datamodule)

"""

from .destseg import DeSTSeg, DeSTSegModel
from .pfadseg import PFADSeg, PFADSegModel

__all__ = ["DeSTSeg", "DeSTSegModel", "PFADSeg", "PFADSegModel"]
__version__ = "0.1.0"
