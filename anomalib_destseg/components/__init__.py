"""Building blocks shared by DeSTSeg and PFADSeg."""

from .anomaly_generator import SyntheticAnomalyGenerator
from .feature_ops import (
    channel_l2_normalize,
    concat_at_finest,
    cosine_distance_map,
    level_products,
    segmentation_input,
)
from .segmentation import ASPP, SegmentationNetwork
from .student import StudentDecoder, StudentEncoder
from .student_teacher import SegmentationGuidedStudentTeacher, check_images, top_k_mean
from .teacher import ResNet18Teacher, TeacherWeightsError

__all__ = [
    "ASPP",
    "ResNet18Teacher",
    "SegmentationGuidedStudentTeacher",
    "SegmentationNetwork",
    "StudentDecoder",
    "StudentEncoder",
    "SyntheticAnomalyGenerator",
    "TeacherWeightsError",
    "channel_l2_normalize",
    "check_images",
    "concat_at_finest",
    "cosine_distance_map",
    "level_products",
    "segmentation_input",
    "top_k_mean",
]
