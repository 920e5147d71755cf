"""Torch building blocks of DeSTSeg and PFADSeg, written once: teacher, student, segmentation network, losses."""

from .feature_ops import (
    channel_l2_normalize,
    concat_at_finest,
    cosine_distance_map,
    dest_map,
    level_products,
    segmentation_input,
)
from .input_size import check_images
from .loss import FocalLoss, SegmentationLoss, StudentCosineLoss
from .maps import ANOMALY_MAPS, DEST_MAP, METRIC_PREFIXES, SEGMENTATION_MAP, check_map_name, map_fields, other_map
from .segmentation import ASPP, SegmentationNetwork
from .stage import Stage, took_a_step
from .student import StudentDecoder, StudentEncoder
from .student_teacher import SegmentationGuidedStudentTeacher, top_k_mean
from .teacher import ResNet18Teacher, TeacherWeightsError

__all__ = [
    "ANOMALY_MAPS",
    "ASPP",
    "DEST_MAP",
    "METRIC_PREFIXES",
    "SEGMENTATION_MAP",
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
    "check_map_name",
    "concat_at_finest",
    "cosine_distance_map",
    "dest_map",
    "level_products",
    "map_fields",
    "other_map",
    "segmentation_input",
    "took_a_step",
    "top_k_mean",
]
