"""Two-stage training shared by DeSTSeg and PFADSeg: the recipe (:class:`TwoStageTraining`) and what surrounds it."""

from .checkpoints import RESUME_CHECKPOINT, latest_resume_checkpoint
from .module import TwoStageTraining

__all__ = ["RESUME_CHECKPOINT", "TwoStageTraining", "latest_resume_checkpoint"]
