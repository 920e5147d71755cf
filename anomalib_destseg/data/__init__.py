"""Data helpers: a generated MVTec-layout dataset for demos and tests."""

from .synthetic import DEFAULT_CATEGORY, make_synthetic_dataset

__all__ = ["DEFAULT_CATEGORY", "make_synthetic_dataset"]
