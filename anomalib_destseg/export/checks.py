"""Export checks shared by DeSTSeg and PFADSeg: warn about untrained models, make input sizes explicit, no autograd.

anomalib's ``Engine.export`` calls the model's ``to_torch``, ``to_onnx`` or ``to_openvino`` (which goes through
``to_onnx``). :class:`ExportChecksMixin` wraps the first two:

- A model that has not completed its planned optimiser steps (``student_steps + segmentation_steps``), or whose
  teacher has no ImageNet weights, is exported with an :class:`UntrainedExportWarning` saying so. The count of
  completed steps is the persistent buffer ``completed_steps`` (saved in checkpoints and in the state dict; older
  checkpoints without it take the checkpoint's ``global_step``).
- ONNX (and so OpenVINO) export uses opset 18 unless told otherwise: the torch.export-based exporter implements
  opset 18 and anomalib's default 14 only triggers a failing down-conversion (with a long traceback in the log).
- Without a resizing pre-processor the model takes images as they come, and their sides must be multiples of 32:
  an ``input_size`` that is not is refused with a ``ValueError`` before tracing, and an export with free height and
  width (``input_size=None``) marks them as multiples of 32 (``32 * torch.export.Dim``) instead of failing inside
  torch.export. With the default pre-processor (Resize to ``image_size``) the exported model resizes any input.
- The torch export (``to_torch``) is saved with parameters that do not require gradients, so anomalib's
  ``TorchInferencer`` (which calls the model without ``torch.no_grad``) works on it.

Example:
    >>> from anomalib_destseg import DeSTSeg
    >>> model = DeSTSeg(student_steps=2, segmentation_steps=2)
    >>> model.training_progress()
    (0, 4)
    >>> model.to_torch("exports")  # doctest: +SKIP
    UntrainedExportWarning: DeSTSeg has completed 0 of its 4 planned training steps ...

"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from anomalib.data.transforms.utils import extract_transforms_by_type
from torchvision.transforms.v2 import Resize

from anomalib_destseg.components.input_size import SIZE_MULTIPLE

COMPLETED_STEPS = "completed_steps"
"""Name of the buffer counting completed optimiser steps (state-dict key of the Lightning module)."""
UNKNOWN_STEPS = -1
"""Value of ``completed_steps`` after loading a plain state dict saved before the buffer existed."""
DEFAULT_OPSET = 18


class UntrainedExportWarning(UserWarning):
    """A model was exported before completing its planned training (or with a teacher without weights)."""


class ExportChecksMixin:
    """Checks around anomalib's export methods; mix in before ``AnomalibModule``.

    The host must register the ``completed_steps`` buffer (:meth:`register_step_counter`), keep it up to date in
    ``training_step`` and provide ``total_steps`` and ``model.teacher.pretrained``.
    """

    completed_steps: torch.Tensor
    total_steps: int

    def register_step_counter(self) -> None:
        """Create the ``completed_steps`` buffer (0) and accept state dicts that lack it (count unknown)."""
        self.register_buffer(COMPLETED_STEPS, torch.zeros((), dtype=torch.long))
        self.register_load_state_dict_pre_hook(_fill_missing_step_count)

    def training_progress(self) -> tuple[int, int]:
        """``(completed, planned)`` optimiser steps; ``completed`` is -1 when unknown (old plain state dict)."""
        return int(self.completed_steps), self.total_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Give checkpoints written before ``completed_steps`` existed the checkpoint's ``global_step``."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        if isinstance(state, dict) and COMPLETED_STEPS not in state and "global_step" in checkpoint:
            state[COMPLETED_STEPS] = torch.tensor(int(checkpoint["global_step"]), dtype=torch.long)

    def warn_if_untrained(self) -> None:
        """Warn (:class:`UntrainedExportWarning`) unless training completed and the teacher has its weights."""
        problems = []
        completed, planned = self.training_progress()
        if completed == UNKNOWN_STEPS:
            pass  # weights from a plain state dict of an older version: nothing known, nothing claimed
        elif completed < planned:
            problems.append(
                f"has completed {completed} of its {planned} planned training steps "
                "(student_steps + segmentation_steps); its scores and maps are not meaningful yet"
            )
        if not bool(self.model.teacher.pretrained):
            problems.append("has a teacher without ImageNet weights (random features)")
        if problems:
            msg = (
                f"{type(self).__name__} {' and '.join(problems)}. Exporting it anyway; train it first "
                "(Engine.fit) or pass the trained checkpoint (Engine.export(..., ckpt_path=...))."
            )
            warnings.warn(msg, UntrainedExportWarning, stacklevel=3)

    def resizes_input(self) -> bool:
        """Whether the pre-processor resizes images (then the exported model takes any input size)."""
        pre_processor = getattr(self, "pre_processor", None)
        transform = getattr(pre_processor, "transform", None) if pre_processor else None
        return transform is not None and bool(extract_transforms_by_type(transform, Resize))

    def to_torch(self, export_root: Path | str, model_file_name: str = "model") -> Path:
        """Export as anomalib's ``{"model": module}`` file, warning if the model is untrained.

        The saved module's parameters do not require gradients: anomalib's ``TorchInferencer`` calls the model
        without ``torch.no_grad`` and converts its outputs to numpy, which fails on tensors that require gradients.
        This model's own parameters are left as they were.
        """
        self.warn_if_untrained()
        trainable = [parameter for parameter in self.parameters() if parameter.requires_grad]
        for parameter in trainable:
            parameter.requires_grad_(False)
        try:
            return super().to_torch(export_root, model_file_name)
        finally:
            for parameter in trainable:
                parameter.requires_grad_(True)

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,  # passed on to torch.onnx.export
    ) -> Path:
        """Export to ONNX (opset 18 by default) after the checks in the module docstring.

        Raises:
            ValueError: If ``input_size`` is not two positive integers, or, without a resizing pre-processor, not
                two multiples of 32, or missing for a tiled model without one.

        """
        self.warn_if_untrained()
        resizes = self.resizes_input()
        if self.model.tiler is not None and not resizes and input_size is None:
            # the tiles' positions are fixed when the graph is traced: they need one image size
            msg = (
                "A tiled model without a resizing pre-processor is exported at one image size: pass input_size "
                "(e.g. engine.export(model, 'onnx', input_size=(512, 512))), or keep the default pre-processor."
            )
            raise ValueError(msg)
        if input_size is not None:
            input_size = _check_input_size(input_size, need_multiple=not resizes)
        elif not resizes and "dynamic_shapes" not in kwargs and "dynamic_axes" not in kwargs:
            kwargs["dynamic_shapes"] = (multiple_of_32_shapes(),)
        kwargs.setdefault("opset_version", DEFAULT_OPSET)
        return super().to_onnx(export_root, model_file_name, input_size, **kwargs)


def multiple_of_32_shapes() -> dict[int, Any]:
    """Dynamic batch, height and width for torch.export, height and width restricted to multiples of 32 (>= 64).

    Example:
        >>> sorted(multiple_of_32_shapes())
        [0, 2, 3]

    """
    height = torch.export.Dim("height_in_32s", min=2, max=1024)
    width = torch.export.Dim("width_in_32s", min=2, max=1024)
    return {0: torch.export.Dim("batch_size"), 2: SIZE_MULTIPLE * height, 3: SIZE_MULTIPLE * width}


def _check_input_size(input_size: Any, need_multiple: bool) -> tuple[int, int]:
    """Return ``input_size`` as ``(H, W)`` or raise a ``ValueError`` saying what is wrong with it."""
    try:
        height, width = (int(side) for side in input_size)
        valid = all(int(side) == side for side in input_size) and height > 0 and width > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        msg = f"input_size must be two positive integers (height, width), got {input_size!r}."
        raise ValueError(msg)
    if need_multiple and (height % SIZE_MULTIPLE or width % SIZE_MULTIPLE):
        msg = (
            f"input_size {height}x{width} cannot be exported: this model has no resizing pre-processor, so it takes "
            f"images as they are, and their sides must be multiples of {SIZE_MULTIPLE} (e.g. 256x256). Pick such a "
            "size, or export a model whose pre-processor resizes (the default)."
        )
        raise ValueError(msg)
    return height, width


def _fill_missing_step_count(
    module: torch.nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    *args: Any,
) -> None:
    """Load-state-dict pre-hook: a state dict without ``completed_steps`` leaves the count unknown (-1)."""
    del module, args
    key = prefix + COMPLETED_STEPS
    if key not in state_dict:
        state_dict[key] = torch.tensor(UNKNOWN_STEPS, dtype=torch.long)
