"""The part of DeSTSeg and PFADSeg that is the same: teacher, student slot, segmentation network and scoring.

A subclass decides what the student is (:meth:`SegmentationGuidedStudentTeacher.student_features`) and may change
how teacher and student features are turned into the segmentation network's input
(:meth:`SegmentationGuidedStudentTeacher.segmentation_features`). Everything else, including ImageNet normalisation
inside the model (so exported models take ``[0, 1]`` images) and the image score, lives here.

In eval mode ``forward`` returns anomalib's ``InferenceBatch(pred_score, anomaly_map)`` of the map named by
``output_map`` (the segmentation map by default, or the DeST map: see :mod:`.maps`) at the input's size;
:meth:`~SegmentationGuidedStudentTeacher.predict_maps` returns both from one pass of the networks. Training runs
:meth:`~SegmentationGuidedStudentTeacher.student_pass` (stage 1) or
:meth:`~SegmentationGuidedStudentTeacher.segmentation_pass` (stage 2) after
:meth:`~SegmentationGuidedStudentTeacher.set_stage`.
"""

from abc import ABC, abstractmethod

import torch
from anomalib.data import InferenceBatch
from anomalib.data.utils.tiler import Tiler
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .feature_ops import dest_map, segmentation_input
from .input_size import check_images
from .maps import ANOMALY_MAPS, DEST_MAP, SEGMENTATION_MAP, check_map_name
from .segmentation import SegmentationNetwork
from .stage import Stage
from .teacher import ResNet18Teacher
from .tiling import check_tiler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def top_k_mean(anomaly_map: torch.Tensor, top_k: int) -> torch.Tensor:
    """Image score: the mean of the ``top_k`` largest values of each map ``[B, 1, H, W]`` (all values if fewer)."""
    flat = anomaly_map.flatten(1)
    return flat.topk(min(top_k, flat.shape[1]), dim=1).values.mean(dim=1)


class SegmentationGuidedStudentTeacher(nn.Module, ABC):
    """Base of the two torch models.

    Args:
        segmentation_in_channels: Channels the segmentation network receives.
        top_k: Number of largest anomaly-map values averaged into the image score (reference 100).
        output_map: The map ``forward`` returns in eval mode: ``"segmentation"`` (the segmentation network's) or
            ``"dest"`` (the teacher-student map). An attribute: it may be changed after construction.

    Raises:
        ValueError: If ``top_k`` < 1 or ``output_map`` is not one of the two names.

    """

    def __init__(
        self, segmentation_in_channels: int = 448, top_k: int = 100, output_map: str = SEGMENTATION_MAP
    ) -> None:
        super().__init__()
        if top_k < 1:
            msg = f"top_k must be >= 1, got {top_k}."
            raise ValueError(msg)
        self.top_k = top_k
        self.output_map = check_map_name(output_map)
        self.teacher = ResNet18Teacher()
        self.segmentation_network = SegmentationNetwork(segmentation_in_channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # anomalib's TilerConfigurationCallback sets this; then images are scored tile by tile (see .tiling)
        self.tiler: Tiler | None = None

    # --- what a subclass provides -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def student_modules(self) -> list[nn.Module]:
        """Modules trained in stage 1 (the student)."""

    @property
    def student_reads_teacher(self) -> bool:
        """Whether :meth:`student_features` needs the teacher's features of its own input."""
        return False

    @abstractmethod
    def student_features(
        self, normalized: torch.Tensor, teacher_features: list[torch.Tensor] | None
    ) -> list[torch.Tensor]:
        """Return the student's three feature levels (shaped like the teacher's) for normalised images."""

    @property
    def segmentation_modules(self) -> list[nn.Module]:
        """Modules trained in stage 2 (default: the segmentation network; a subclass adds what feeds it)."""
        return [self.segmentation_network]

    def segmentation_features(
        self, teacher_features: list[torch.Tensor], student_features: list[torch.Tensor]
    ) -> torch.Tensor:
        """Turn teacher and student features of the same images into the segmentation network's input."""
        return segmentation_input(teacher_features, student_features)

    def segmentation_parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Stage-2 parameters as (fast group: residual blocks, slow group: ASPP and head)."""
        network = self.segmentation_network
        return list(network.residual.parameters()), [*network.aspp.parameters(), *network.head.parameters()]

    # --- shared behaviour ---------------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalise ``[0, 1]`` images."""
        return (images - self.mean) / self.std

    def set_stage(self, stage: Stage) -> None:
        """Put sub-modules in the mode a training stage needs (the teacher is frozen in either mode)."""
        student_training = Stage(stage) is Stage.STUDENT
        for module in self.student_modules:
            module.train(student_training)
        for module in self.segmentation_modules:
            module.train(not student_training)

    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher and student features of ``[0, 1]`` images."""
        normalized = self.normalize(images)
        teacher = self.teacher(normalized)
        return teacher, self.student_features(normalized, teacher)

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """The segmentation network's probability map ``[B, 1, H/4, W/4]`` for ``[0, 1]`` images."""
        return self.segmentation_network(self.segmentation_features(*self.encode(images)))

    # --- training forwards ------------------------------------------------------------------------------------
    def student_pass(
        self, student_input: torch.Tensor, clean: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Stage 1: the student's features of ``student_input`` and, as their target, the teacher's of ``clean``.

        Args:
            student_input: ``[0, 1]`` images the student sees (corrupted when denoising, the reference).
            clean: The same images without synthetic anomalies.

        Returns:
            ``(student features, teacher features)``, three levels each, finest first; the teacher's are detached.

        """
        normalized = self.normalize(student_input)
        teacher_of_input = self.teacher(normalized) if self.student_reads_teacher else None
        student = self.student_features(normalized, teacher_of_input)
        with torch.no_grad():
            target = self.teacher(self.normalize(clean))
        return student, target

    def segmentation_pass(self, corrupted: torch.Tensor) -> torch.Tensor:
        """Stage 2: the probability map ``[B, 1, H/4, W/4]`` of corrupted images, with teacher and student frozen."""
        with torch.no_grad():
            teacher, student = self.encode(corrupted)
        return self.segmentation_network(self.segmentation_features(teacher, student))

    def dest(self, images: torch.Tensor) -> torch.Tensor:
        """The DeST map ``[B, 1, H/4, W/4]`` (float32) of ``[0, 1]`` images: :func:`~.feature_ops.dest_map`."""
        return dest_map(*self.encode(images))

    def predict_maps(self, images: torch.Tensor, maps: tuple[str, ...] = ANOMALY_MAPS) -> dict[str, InferenceBatch]:
        """Score ``[0, 1]`` images ``[B, 3, H, W]`` with the named maps, encoding them once.

        Each map is resized bilinearly (``align_corners=False``) to the input's size, in float32, and its image score
        is the mean of its ``top_k`` largest values, as the reference scores both of its maps. With a ``tiler`` the
        networks see the tiles; the tiles' maps (each at its tile's size) are put back together by the tiler before
        the image score is taken.

        Args:
            images: Images with H, W multiples of 32 (with a tiler: the tiles' sides are, and the images are at
                least one tile large).
            maps: Names from :data:`~.maps.ANOMALY_MAPS` (default both).

        Returns:
            ``{name: InferenceBatch(pred_score=[B], anomaly_map=[B, 1, H, W])}`` in the order of ``maps``.

        Raises:
            ValueError: For bad images or an unknown map name.

        Example:
            >>> from anomalib_destseg import DeSTSegModel
            >>> both = DeSTSegModel().eval().predict_maps(torch.rand(1, 3, 64, 64))
            >>> list(both), both["dest"].anomaly_map.shape
            (['segmentation', 'dest'], torch.Size([1, 1, 64, 64]))

        """
        for name in maps:
            check_map_name(name, "maps")
        tiles = self.tile(images)
        teacher, student = self.encode(tiles)
        result = {}
        for name in maps:
            if name == DEST_MAP:
                small = dest_map(teacher, student)
            else:
                small = self.segmentation_network(self.segmentation_features(teacher, student))
            # float32 from here: under bf16 autocast (anomalib_destseg.inference) the map and the top-k score keep
            # full precision (fewer tied scores); a no-op in float32, invisible to export.
            anomaly_map = F.interpolate(small.float(), size=tiles.shape[-2:], mode="bilinear", align_corners=False)
            if self.tiler is not None:
                anomaly_map = self.tiler.untile(anomaly_map)
            result[name] = InferenceBatch(pred_score=top_k_mean(anomaly_map, self.top_k), anomaly_map=anomaly_map)
        return result

    def tile(self, images: torch.Tensor) -> torch.Tensor:
        """The tiles of ``[0, 1]`` images ``[B, 3, H, W]``, a batch ``[B * tiles, 3, h, w]`` the networks can take.

        Without a tiler the images themselves, checked.

        Raises:
            ValueError: For bad images, or a tiler whose tiles the networks cannot take or that is larger than them.

        """
        if self.tiler is None:
            check_images(images)
            return images
        if images.ndim == 4:
            check_tiler(self.tiler, images.shape[-2:])
        tiles = self.tiler.tile(images)
        check_images(tiles)
        return tiles

    def forward(self, images: torch.Tensor) -> torch.Tensor | InferenceBatch:
        """Segment ``[0, 1]`` images ``[B, 3, H, W]`` (H, W multiples of 32).

        Returns:
            In training mode the 1/4-resolution probability map (gradients through every part); in eval mode
            ``InferenceBatch(pred_score=[B], anomaly_map=[B, 1, H, W])`` of the ``output_map``.

        """
        if self.training:
            check_images(images)
            return self.segment(images)
        return self.predict_maps(images, (self.output_map,))[self.output_map]
