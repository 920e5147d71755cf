"""Two-stage training shared by DeSTSeg and PFADSeg: the recipe (:class:`TwoStageTraining`) and what surrounds it."""

from .module import TwoStageTraining

__all__ = ["TwoStageTraining"]
