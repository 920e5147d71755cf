"""Data: the synthetic anomalies of training, the reference's resizing and rotation, image checks, a demo dataset."""

from .anomaly_generator import SyntheticAnomalyGenerator
from .resize import AntialiasedPreProcessor, AntialiasedResize, ReferenceResize, resize_masks
from .synthetic import DEFAULT_CATEGORY, make_synthetic_dataset

__all__ = [
    "DEFAULT_CATEGORY",
    "AntialiasedPreProcessor",
    "AntialiasedResize",
    "ReferenceResize",
    "SyntheticAnomalyGenerator",
    "make_synthetic_dataset",
    "resize_masks",
]
