"""The frozen ImageNet ResNet-18 teacher (conv1 .. layer3) and how its weights are found.

By default the weights come from torchvision's normal loading (``ResNet18_Weights.IMAGENET1K_V1``, the same values
as timm's ``resnet18.tv_in1k``), which reads torch's hub cache and downloads only when the file is missing there.
Air-gapped machines pass a local file instead. A teacher without loaded weights is never used silently: the
``pretrained`` buffer records whether weights were loaded, and the Lightning modules refuse to train or predict
without them.

Example:
    >>> teacher = ResNet18Teacher()
    >>> teacher.load_weights("resnet18.pth")  # doctest: +SKIP
    >>> [f.shape[1] for f in teacher(torch.rand(2, 3, 256, 256))]  # doctest: +SKIP
    [64, 128, 256]

"""

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from anomalib_destseg.components.tensor_files import load_plain

logger = logging.getLogger(__name__)

IMAGENET = "imagenet"
TIMM_NAME = "resnet18.tv_in1k"
"""timm's name of the teacher's weights (torchvision's IMAGENET1K_V1; timm's plain ``resnet18`` is other weights)."""
TEACHER_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")
TORCHVISION_FILE = "resnet18-f37072fd.pth"


class TeacherWeightsError(RuntimeError):
    """The teacher's ImageNet weights could not be loaded."""


def _offline_message(cause: BaseException) -> str:
    cache = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE
    return (
        "Could not load the DeSTSeg teacher's ImageNet ResNet-18 weights (torchvision IMAGENET1K_V1, the same as timm "
        f"'resnet18.tv_in1k'): {type(cause).__name__}: {cause}. Without network access there are two fixes: "
        "(1) pass teacher_weights='/path/to/resnet18.pth' (a torchvision-style ResNet-18 state dict, .pth or "
        f".safetensors; only conv1..layer3 are needed), or (2) copy torchvision's file to {cache} "
        "(set TORCH_HOME to use another cache folder). The teacher is never left randomly initialised."
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file without unpickling arbitrary objects.

    Args:
        path: File to read.

    Returns:
        Mapping of parameter names to tensors. A ``{"state_dict": ...}`` wrapper is unwrapped.

    Raises:
        FileNotFoundError: If the file does not exist.
        TeacherWeightsError: If the file is not a plain state dict of tensors.

    """
    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"Teacher weights file not found: {path}"
        raise FileNotFoundError(msg)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = load_plain(path, "teacher weights (a ResNet-18 state dict)", TeacherWeightsError)
    except TeacherWeightsError:
        raise
    except Exception as error:  # safetensors: corrupt files, say which file and why
        msg = f"Could not read teacher weights from {path} as a plain state dict: {error}"
        raise TeacherWeightsError(msg) from error
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        msg = f"{path} does not hold a state dict of tensors (got {type(state).__name__})."
        raise TeacherWeightsError(msg)
    return dict(state)


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """Load torchvision's ImageNet ResNet-18 weights through its normal (cached) loading.

    Raises:
        TeacherWeightsError: If the weights are neither cached nor downloadable, with both ways to fix it.

    """
    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except OSError as error:  # URLError, socket errors and missing files are all OSErrors
        raise TeacherWeightsError(_offline_message(error)) from error


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that normalises with its running statistics and never updates them, in either mode.

    Same parameters, buffers and state-dict keys as ``BatchNorm2d`` (checkpoints are unchanged), and in eval mode
    the same values; in training mode it computes what eval mode computes. The teacher is frozen by construction
    rather than by being kept in eval mode, so it follows its parent's mode like every other module (Lightning
    warns about modules left in eval mode at the start of training).

    Example:
        >>> norm = FrozenBatchNorm2d(3).train()
        >>> _ = norm(torch.rand(4, 3, 8, 8) + 5)
        >>> norm.running_mean.tolist()  # unchanged: no statistics are gathered
        [0.0, 0.0, 0.0]

    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with the running statistics."""
        return nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, momentum=0.0, eps=self.eps
        )


class ResNet18Teacher(nn.Module):
    """ResNet-18 from conv1 to layer3, frozen: its outputs do not depend on the module's mode.

    The forward pass returns the layer1, layer2 and layer3 feature maps (64@H/4, 128@H/8, 256@H/16). Parameters
    never require gradients and its BatchNorm layers are :class:`FrozenBatchNorm2d`, so the ImageNet statistics are
    used and kept in training mode too.
    """

    def __init__(self) -> None:
        super().__init__()
        trunk = resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3
        self.register_buffer("pretrained", torch.tensor(False))
        self.requires_grad_(False)

    def load_weights(self, source: str | Path = IMAGENET) -> None:
        """Load ImageNet weights from torchvision's cache/download (``"imagenet"``) or from a local file.

        Args:
            source: ``"imagenet"`` or a path to a torchvision-style ResNet-18 state dict (``.pth``/``.safetensors``).
                Keys outside conv1..layer3 (layer4, fc) are ignored.

        Raises:
            TeacherWeightsError: If the weights cannot be found or do not fit.

        """
        state = imagenet_state_dict() if str(source) == IMAGENET else read_state_dict(source)
        state = {key.removeprefix("module."): value for key, value in state.items()}
        state = {key: value for key, value in state.items() if key.startswith(TEACHER_PREFIXES)}
        expected = {k for k in self.state_dict() if k != "pretrained" and not k.endswith("num_batches_tracked")}
        missing = sorted(expected - state.keys())
        if missing:
            msg = f"Teacher weights from {source} lack {len(missing)} ResNet-18 tensors, e.g. {missing[:3]}."
            raise TeacherWeightsError(msg)
        unexpected = sorted(state.keys() - self.state_dict().keys())
        if unexpected:  # e.g. ResNet-34 weights: same first blocks, more of them; never load them silently
            msg = (
                f"Teacher weights from {source} hold {len(unexpected)} conv1..layer3 tensors that ResNet-18 lacks, "
                f"e.g. {unexpected[:3]}: they are not ResNet-18 weights."
            )
            raise TeacherWeightsError(msg)
        try:
            self.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatches: another architecture's weights
            msg = f"Teacher weights from {source} do not fit ResNet-18: {error}"
            raise TeacherWeightsError(msg) from error
        self.pretrained.fill_(True)
        logger.info("Loaded the teacher's ImageNet ResNet-18 weights from %s.", source)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the layer1..layer3 features of ImageNet-normalised images."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        first = self.layer1(x)
        second = self.layer2(first)
        return [first, second, self.layer3(second)]
