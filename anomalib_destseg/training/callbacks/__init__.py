"""Lightning callbacks of two-stage training, returned by the models' ``configure_callbacks``."""

from .anomaly_stream import AnomalyStream
from .attached import callbacks_to_attach
from .channels_last import ChannelsLast
from .data_checks import DataChecks, usable_batch_size
from .non_finite import LAST_GOOD_CHECKPOINT, NonFiniteGuard
from .periodic_checkpoint import PeriodicCheckpoint
from .progress import TrainingProgress
from .safe_checkpoint_files import SafeCheckpointFiles
from .teacher_weights import TeacherWeights
from .tiling_checks import TilingChecks

__all__ = [
    "LAST_GOOD_CHECKPOINT",
    "AnomalyStream",
    "ChannelsLast",
    "DataChecks",
    "NonFiniteGuard",
    "PeriodicCheckpoint",
    "SafeCheckpointFiles",
    "TeacherWeights",
    "TilingChecks",
    "TrainingProgress",
    "callbacks_to_attach",
    "usable_batch_size",
]
