"""Torch building blocks of DeSTSeg and PFADSeg, written once: teacher, student, segmentation network, losses."""

from .feature_ops import (
    channel_l2_normalize,
    concat_at_finest,
    cosine_distance_map,
    level_products,
    segmentation_input,
)
from .loss import FocalLoss, SegmentationLoss, StudentCosineLoss
from .segmentation import ASPP, SegmentationNetwork
from .stage import Stage, took_a_step
from .student import StudentDecoder, StudentEncoder
from .student_teacher import SegmentationGuidedStudentTeacher, check_images, top_k_mean
from .teacher import ResNet18Teacher, TeacherWeightsError

__all__ = [
    "ASPP",
    "FocalLoss",
    "ResNet18Teacher",
    "SegmentationGuidedStudentTeacher",
    "SegmentationLoss",
    "SegmentationNetwork",
    "Stage",
    "StudentCosineLoss",
    "StudentDecoder",
    "StudentEncoder",
    "TeacherWeightsError",
    "channel_l2_normalize",
    "check_images",
    "concat_at_finest",
    "cosine_distance_map",
    "level_products",
    "segmentation_input",
    "took_a_step",
    "top_k_mean",
]
