"""The two training stages of DeSTSeg and PFADSeg, and which training batches were optimiser steps.

Example:
    >>> Stage.at(step=999, student_steps=1000), Stage.at(step=1000, student_steps=1000)
    (<Stage.STUDENT: 'student'>, <Stage.SEGMENTATION: 'segmentation'>)

"""

from enum import Enum
from typing import Any


def took_a_step(outputs: Any) -> bool:
    """Whether a training batch was an optimiser step, from the ``outputs`` a callback's ``on_train_batch_end`` gets.

    Incomplete batches are skipped (the reference drops them): ``training_step`` returns ``None``, which Lightning
    hands to callbacks as ``{}``, not ``None``.

    Example:
        >>> took_a_step({}), took_a_step(None), took_a_step({"loss": 0.5})
        (False, False, True)

    """
    return bool(outputs)


class Stage(str, Enum):
    """Stage 1 trains the student (cosine loss); stage 2 the segmentation network (focal + L1 loss)."""

    STUDENT = "student"
    SEGMENTATION = "segmentation"

    @classmethod
    def at(cls, step: int, student_steps: int) -> "Stage":
        """The stage that optimiser step ``step`` (0-based) belongs to."""
        return cls.STUDENT if step < student_steps else cls.SEGMENTATION

    @property
    def number(self) -> int:
        """1 for the student stage, 2 for the segmentation stage."""
        return 1 if self is Stage.STUDENT else 2
