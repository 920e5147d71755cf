"""DeSTSeg as an anomalib model.

DeSTSeg (Zhang, Li, Li, Huang, Shan, Chen: "DeSTSeg: Segmentation Guided Denoising Student-Teacher for Anomaly
Detection", CVPR 2023) trains a denoising student to reproduce a frozen ImageNet teacher's features of clean images
from synthetically corrupted ones, then trains a segmentation network on the product of their normalised features
to find the synthetic defects.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_destseg import DeSTSeg
    >>> model = DeSTSeg(texture_dir="datasets/dtd/images")
    >>> engine = Engine()
    >>> engine.fit(model, datamodule=MVTecAD(category="bottle", train_batch_size=32))  # doctest: +SKIP

    From the command line::

        anomalib train --model anomalib_destseg.DeSTSeg --data anomalib.data.MVTecAD \
            --model.texture_dir datasets/dtd/images

"""

from pathlib import Path
from typing import Any

from anomalib.models.components import AnomalibModule

from anomalib_destseg.training import TwoStageTraining

from .reference_checkpoint import convert_state_dict, read_reference_checkpoint
from .torch_model import DeSTSegModel


class DeSTSeg(TwoStageTraining, AnomalibModule):
    """DeSTSeg: segmentation-guided denoising student-teacher anomaly detection.

    Its arguments are the two-stage recipe of :class:`~anomalib_destseg.training.TwoStageTraining` (every default is
    the reference's: 1000 student + 4000 segmentation steps at batch 32, set on the datamodule).

    Args:
        **kwargs: The recipe's arguments (``student_steps``, ``segmentation_steps``, ``student_lr``, ``texture_dir``,
            ``teacher_weights``, ...; ``anomalib train --model anomalib_destseg.DeSTSeg --help`` lists them) and
            anomalib's ``pre_processor``, ``post_processor``, ``evaluator``, ``visualizer``.

    Example:
        >>> model = DeSTSeg(student_steps=10, segmentation_steps=20)
        >>> model.trainer_arguments["max_steps"]
        30

    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = DeSTSegModel(top_k=self.hparams.top_k, output_map=self.hparams.output_map)

    @classmethod
    def from_reference_checkpoint(cls, path: str | Path, **kwargs: Any) -> "DeSTSeg":
        """A DeSTSeg with the weights of one of the authors' released checkpoints, ready to test, predict, export.

        The reference code trains at 256x256 (the default pre-processor). The post-processor has no thresholds
        until validation: ``Engine.validate(model, datamodule=...)`` sets anomalib's adaptive thresholds and
        normalisation, as training does; without it, labels and masks threshold the raw probabilities at 0.5.

        Args:
            path: A reference ``.pckl`` file (``DeSTSeg_MVTec_5000_<category>.pckl``).
            **kwargs: Constructor arguments (e.g. ``pre_processor``, ``evaluator``).

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ReferenceCheckpointError: If the file is not a reference checkpoint (the message names the tensors).

        Example:
            >>> model = DeSTSeg.from_reference_checkpoint("DeSTSeg_MVTec_5000_bottle.pckl")  # doctest: +SKIP

        """
        model = cls(**kwargs)
        state = convert_state_dict(read_reference_checkpoint(path), model.model.state_dict())
        model.model.load_state_dict(state, strict=True)
        model.completed_steps.fill_(model.total_steps)  # fully trained: exports do not warn
        return model
