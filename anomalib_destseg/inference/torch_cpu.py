"""Faster PyTorch inference on CPUs: channels-last memory layout and bf16 autocast, same outputs as the model.

:class:`CPUInferenceModel` wraps a trained anomalib model (DeSTSeg, PFADSeg or any ``AnomalibModule``, or a bare
torch model returning ``InferenceBatch``) and runs pre-processor -> torch model -> post-processor exactly like the
model's own ``forward`` (which is what anomalib exports), with two optional speed-ups:

- ``channels_last``: weights and input in NHWC layout, which oneDNN's convolutions prefer on x86 CPUs. Same
  arithmetic, so outputs match fp32 to rounding.
- ``bf16``: the torch model runs under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (convolutions and matrix
  products in bfloat16, fast on CPUs with AVX-512 BF16 or AMX). The model's outputs are cast back to float32 before
  the post-processor, so thresholds and normalisation run in float32. This costs accuracy (bfloat16 keeps 8 bits of
  mantissa): measure it (``benchmarks/cpu_speed.py --checkpoint ... --data-root ...``).
- ``torch_compile``: the torch model goes through ``torch.compile`` (inductor) with weight freezing, which folds
  BatchNorm into the convolutions, fuses the element-wise tails and pre-packs the weights in oneDNN's layout. Needs
  a C++ compiler; the first call compiles (a minute or two on a small CPU), later calls with the same input shape
  are fast. Same float32 arithmetic up to the BatchNorm folding, so outputs match fp32 closely.

Example:
    >>> import torch
    >>> from anomalib_destseg import DeSTSeg
    >>> model = DeSTSeg()  # a trained model in practice
    >>> fast = CPUInferenceModel(model, channels_last=True, bf16=True)
    >>> batch = fast(torch.rand(2, 3, 256, 256))  # doctest: +SKIP
    >>> batch.anomaly_map.dtype  # doctest: +SKIP
    torch.float32

"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable

import torch
from anomalib.data import InferenceBatch
from torch import nn

CPP_COMPILERS = ("g++", "c++", "clang++", "cl")  # what inductor's CPU backend can build with


def _as_float32(batch: InferenceBatch) -> InferenceBatch:
    """Cast the floating-point fields of an ``InferenceBatch`` to float32 (labels and masks stay as they are)."""
    return InferenceBatch(
        **{
            name: value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value
            for name, value in batch._asdict().items()
        }
    )


class CPUInferenceModel(nn.Module):
    """Eval-mode wrapper for fast CPU inference that returns the same ``InferenceBatch`` as the wrapped model.

    Args:
        model: A trained ``AnomalibModule`` (pre-processor, ``model`` and post-processor are used) or a torch model
            whose eval-mode forward returns ``InferenceBatch``.
        channels_last: Use the channels-last (NHWC) memory format for weights and inputs.
        bf16: Run the torch model under bfloat16 autocast; outputs are returned as float32.
        torch_compile: Compile the torch model with ``torch.compile`` and inductor's weight freezing (first call slow).
        copy_model: Work on a deep copy (default), leaving ``model`` untouched; ``False`` converts ``model`` in place
            (saves the memory of a second copy).

    Example:
        >>> from anomalib_destseg import DeSTSeg
        >>> fast = CPUInferenceModel(DeSTSeg(), channels_last=True)
        >>> fast.describe()
        'fp32, channels-last'

    """

    def __init__(
        self,
        model: nn.Module,
        channels_last: bool = False,
        bf16: bool = False,
        copy_model: bool = True,
        torch_compile: bool = False,
    ) -> None:
        super().__init__()
        module = copy.deepcopy(model) if copy_model else model
        module.eval()
        if channels_last:
            module.to(memory_format=torch.channels_last)
        self.module = module
        self.channels_last = channels_last
        self.bf16 = bf16
        self.torch_compile = torch_compile
        self._compiled_core: Callable[[torch.Tensor], InferenceBatch] | None = None

    def describe(self) -> str:
        """Short human-readable description of the settings."""
        parts = ["bf16 autocast" if self.bf16 else "fp32", "channels-last" if self.channels_last else "NCHW"]
        return ", ".join([*parts, "compiled"] if self.torch_compile else parts)

    def train(self, mode: bool = True) -> CPUInferenceModel:
        """Inference only: the wrapped model stays in eval mode."""
        del mode
        return super().train(False)

    def _compiled(self, core: nn.Module) -> Callable[[torch.Tensor], InferenceBatch]:
        """The inductor-compiled core, built once; freezing treats the eval-mode weights as constants."""
        if self._compiled_core is None:
            if not any(shutil.which(name) for name in CPP_COMPILERS):
                msg = (
                    "torch_compile needs a C++ compiler (inductor builds its CPU kernels with one), and none of "
                    f"{', '.join(CPP_COMPILERS)} is on PATH: install one (e.g. g++), or use the channels_last or "
                    "openvino_fp32 variant instead."
                )
                raise RuntimeError(msg)
            compiled = torch.compile(core, dynamic=False)

            def run(images: torch.Tensor) -> InferenceBatch:
                # freezing is read when the graph compiles (first call per input shape), so it must be on then.
                with torch._inductor.config.patch(freezing=True):
                    return compiled(images)

            self._compiled_core = run
        return self._compiled_core

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Predict ``[B, 3, H, W]`` images in ``[0, 1]`` (what the exported model takes)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        module = self.module
        # An AnomalibModule: pre-processor -> torch model -> post-processor, as its forward (and its export) does.
        is_anomalib = all(hasattr(module, name) for name in ("pre_processor", "post_processor", "model"))
        pre_processor = getattr(module, "pre_processor", None) if is_anomalib else None
        post_processor = getattr(module, "post_processor", None) if is_anomalib else None
        core = module.model if is_anomalib else module
        with torch.inference_mode():
            if pre_processor:
                images = pre_processor(images)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                predictions = self._compiled(core)(images) if self.torch_compile else core(images)
            predictions = _as_float32(predictions)
            if post_processor:
                predictions = post_processor(predictions)
        return predictions
