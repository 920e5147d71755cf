"""Resizing as the reference does it: antialiased bilinear for images, bilinear + threshold for masks.

The reference resizes training images, test images and DTD textures with PIL's bilinear filter, which widens its
triangle kernel by the shrink factor (antialiasing: MVTec AD images are 700-1024 px, the model sees 256 px). It
resizes test masks bilinearly with antialiasing too, then thresholds them at 0.5. anomalib's defaults differ: its
exports drop antialiasing (and OpenVINO ignores ONNX's ``antialias`` flag), and it resizes masks nearest-neighbour.

anomalib resizes in two places: its datamodules append the model pre-processor's ``Resize`` to each dataset's
augmentations (every image and mask is resized on its own, before batching), and the pre-processor applies its
transform to every batch (then a no-op) and inside exported models.

- :class:`ReferenceResize` is torchvision's ``Resize(antialias=True)`` for images and :func:`resize_masks` for
  ground-truth masks, wherever anomalib applies it.
- :class:`AntialiasedResize` computes the same image resize with two matrix products whose weights are built from
  the input's shape, so an exported model (ONNX, OpenVINO) resizes any input size exactly as the Lightning model.
- :class:`AntialiasedPreProcessor`, the models' default pre-processor, puts both in place and keeps checkpoints
  readable by anomalib alone (they store a plain ``torchvision`` ``Resize``).

Example:
    >>> import torch
    >>> from torch.nn import functional as F
    >>> images = torch.rand(1, 3, 90, 120)
    >>> expected = F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True)
    >>> bool((AntialiasedResize((32, 32))(images) - expected).abs().max() < 1e-5)
    True

"""

from collections.abc import Sequence
from typing import Any

import torch
from anomalib.pre_processing import PreProcessor
from anomalib.pre_processing.utils.transform import get_exportable_transform
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision import tv_tensors
from torchvision.transforms.v2 import Compose, InterpolationMode, Resize, Transform

from anomalib_destseg.components.input_size import SIZE_MULTIPLE

MASK_THRESHOLD = 0.5
"""A resized mask pixel is a defect when its bilinear value is at least this (the reference's threshold)."""


def antialiased_weights(in_size: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
    """Resampling matrix ``[out_size, in_size]`` of bilinear interpolation with antialiasing.

    Output pixel ``i`` is centred at ``(i + 0.5) * scale`` in input pixels (``scale = in_size / out_size``); input
    pixel ``j`` (centred at ``j + 0.5``) gets the triangle weight ``max(0, 1 - |distance| / max(scale, 1))``, and
    each row is normalised to sum to 1. Shrinking widens the triangle by the shrink factor (antialiasing); enlarging
    keeps it one pixel wide (plain bilinear). This is PIL's bilinear filter and torch's ``antialias=True``.

    ``in_size`` may be symbolic (an export with dynamic height and width): the weights are computed with tensor
    operations only, so they stay in the exported graph.

    Example:
        >>> antialiased_weights(4, 2, torch.zeros(())).tolist()
        [[0.375, 0.375, 0.25, 0.0], [0.0, 0.25, 0.375, 0.375]]

    """
    positions = torch.arange(in_size, dtype=like.dtype, device=like.device) + 0.5
    scale = positions.new_full((), in_size) / out_size  # a tensor, not a Python float: symbolic sizes stay symbolic
    support = scale.clamp(min=1.0)
    centres = (torch.arange(out_size, dtype=like.dtype, device=like.device) + 0.5) * scale
    weights = (1 - ((positions[None, :] - centres[:, None]) / support).abs()).clamp(min=0)
    return weights / weights.sum(dim=1, keepdim=True)


class AntialiasedResize(nn.Module):
    """Bilinear resize with antialiasing of ``[..., H, W]`` images to ``size``, built from matrix products.

    Same values as ``F.interpolate(..., mode="bilinear", antialias=True)`` (to about 1e-6), but exportable: ONNX
    runtimes and OpenVINO execute it exactly, whatever the input size.

    Args:
        size: Output ``(height, width)``.

    """

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        height, width = (int(side) for side in size)
        self.size = (height, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Resize the last two dimensions to ``size``."""
        height, width = images.shape[-2:]
        rows = antialiased_weights(height, self.size[0], images)
        columns = antialiased_weights(width, self.size[1], images)
        # As one stack of [H, W] matrices: on 4-D tensors, OpenVINO 2026.4's CPU plugin fuses the following
        # per-channel normalisation into a constant-weight MatMul and refuses to compile some exports.
        planes = images.reshape(-1, height, width)
        return (rows @ planes @ columns.transpose(0, 1)).reshape(*images.shape[:-2], *self.size)

    def extra_repr(self) -> str:
        """Show the output size."""
        return f"size={self.size}"


def resize_masks(masks: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize 0/1 masks ``[..., H, W]`` as the reference's evaluation does: bilinear with antialiasing, then >= 0.5.

    Keeps the input's type (e.g. a boolean ``tv_tensors.Mask``). A mask already of ``size`` is returned unchanged.

    Example:
        >>> mask = torch.zeros(1, 8, 8, dtype=torch.bool)
        >>> mask[0, :2, :2] = True  # a 2x2 defect: a quarter of a 4x4 block after halving
        >>> resize_masks(mask, (4, 4))[0, 0].tolist()
        [True, False, False, False]

    """
    size = tuple(int(side) for side in size)
    if tuple(masks.shape[-2:]) == size:
        return masks
    leading = masks.shape[:-2]
    values = masks.as_subclass(torch.Tensor).float().reshape(-1, 1, *masks.shape[-2:])
    values = F.interpolate(values, size=size, mode="bilinear", align_corners=False, antialias=True)
    resized = (values >= MASK_THRESHOLD).to(masks.dtype).reshape(*leading, *size)
    return tv_tensors.wrap(resized, like=masks) if isinstance(masks, tv_tensors.TVTensor) else resized


class ReferenceResize(Resize):
    """torchvision's antialiased bilinear ``Resize`` for images; masks resized as the reference (:func:`resize_masks`).

    Args:
        size: Output ``(height, width)``.

    Example:
        >>> from torchvision import tv_tensors
        >>> mask = tv_tensors.Mask(torch.zeros(8, 8, dtype=torch.bool))
        >>> image, resized = ReferenceResize((4, 4))(torch.rand(3, 8, 8), mask)
        >>> image.shape, type(resized).__name__
        (torch.Size([3, 4, 4]), 'Mask')

    """

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__(size=list(size), antialias=True)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Masks with :func:`resize_masks`, everything else as ``Resize``."""
        if isinstance(inpt, tv_tensors.Mask):
            return resize_masks(inpt, self.size)
        return super().transform(inpt, params)


def _replace_resizes(transform: Transform | None, convert: Any) -> Transform | None:
    """``transform`` with every ``Resize`` step passed through ``convert`` (a copy where something changed)."""
    if isinstance(transform, Compose):
        return Compose([_replace_resizes(step, convert) for step in transform.transforms])
    return convert(transform) if isinstance(transform, Resize) else transform


def _to_reference(resize: Resize) -> Resize:
    """Antialiased two-sided bilinear ``Resize`` steps become :class:`ReferenceResize`; others stay as they are."""
    two_sided = resize.size is not None and len(resize.size) == 2
    bilinear = InterpolationMode(resize.interpolation) == InterpolationMode.BILINEAR  # an enum, or its string
    suitable = resize.antialias and bilinear and two_sided
    return ReferenceResize(resize.size) if suitable and not isinstance(resize, ReferenceResize) else resize


def _to_plain(resize: Resize) -> Resize:
    """:class:`ReferenceResize` back to torchvision's ``Resize`` (what anomalib can store in a checkpoint)."""
    return Resize(size=resize.size, antialias=True) if isinstance(resize, ReferenceResize) else resize


def with_plain_resizes(transform: Transform | None) -> Transform | None:
    """``transform`` with every :class:`ReferenceResize` as torchvision's ``Resize`` (nearest-neighbour masks).

    Example:
        >>> type(with_plain_resizes(ReferenceResize((8, 8)))).__name__
        'Resize'

    """
    return _replace_resizes(transform, _to_plain)


def exportable_transform(transform: Transform | None) -> nn.Module | None:
    """Anomalib's exportable version of ``transform``, with every antialiased ``Resize`` as :class:`AntialiasedResize`.

    anomalib's own conversion turns antialiasing off (and OpenVINO would ignore it), so an export given full-size
    images would compute other values than the Lightning model; this keeps them equal.
    """
    if (
        isinstance(transform, Resize)
        and transform.antialias
        and transform.size is not None
        and len(transform.size) == 2
    ):
        return AntialiasedResize(transform.size)
    if isinstance(transform, Compose):
        return nn.Sequential(*(exportable_transform(step) for step in transform.transforms))
    return get_exportable_transform(_to_plain(transform) if isinstance(transform, Resize) else transform)


def _refuse_crops(transform: Transform | None) -> None:
    """Raise a ``ValueError`` naming a crop in ``transform``: masks are resized to the output, never cropped."""
    steps = transform.transforms if isinstance(transform, Compose) else [transform]
    crops = [type(step).__name__ for step in steps if "Crop" in type(step).__name__]
    if crops:
        msg = (
            f"The pre-processor transform crops ({', '.join(crops)}), but ground-truth masks are only resized: "
            "use a transform that resizes (and normalises) only, or anomalib's own PreProcessor."
        )
        raise ValueError(msg)


class AntialiasedPreProcessor(PreProcessor):
    """anomalib's ``PreProcessor`` with the reference's resizing wherever anomalib resizes.

    - Antialiased bilinear ``Resize`` steps of the transform become :class:`ReferenceResize`: anomalib's datamodules
      take that step into each dataset's augmentations, so images are resized with antialiasing and ground-truth
      masks as the reference's evaluation (bilinear with antialiasing, threshold 0.5) instead of nearest-neighbour.
    - In exported models the same image resize runs as :class:`AntialiasedResize`, so exports given full-size
      images match the Lightning model.
    - Checkpoints store a plain torchvision ``Resize`` (anomalib can restore only its known transforms); loading
      one turns it back into :class:`ReferenceResize`. A transform without antialiasing (release 0.1.0's
      checkpoints) is kept as it is, in training and in export.

    Args:
        transform: The image transform; it must not crop (masks are resized to the output, not cropped).

    Example:
        >>> from torchvision.transforms.v2 import Resize
        >>> pre_processor = AntialiasedPreProcessor(Resize((64, 64), antialias=True))
        >>> type(pre_processor.transform).__name__, pre_processor(torch.rand(1, 3, 100, 100)).shape
        ('ReferenceResize', torch.Size([1, 3, 64, 64]))

    """

    def __init__(self, transform: Transform | None = None) -> None:
        _refuse_crops(transform)
        super().__init__(transform=_replace_resizes(transform, _to_reference))
        self.export_transform = exportable_transform(self.transform)

    def checkpoint_config(self) -> dict[str, Any]:
        """Anomalib's configuration entry, with plain ``Resize`` steps."""
        transform = self.transform
        self.transform = with_plain_resizes(transform)
        try:
            return super().checkpoint_config()
        finally:
            self.transform = transform

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore the transform from a checkpoint, with the reference's resizing where it resizes with antialiasing."""
        super().load_checkpoint_config(config)
        self.transform = _replace_resizes(self.transform, _to_reference)
        self.export_transform = exportable_transform(self.transform)


def default_pre_processor(image_size: Sequence[int] | None = None) -> AntialiasedPreProcessor:
    """The models' pre-processor: resize to ``image_size`` (default 256x256) with antialiasing, no normalisation.

    Anomalies are synthesised on ``[0, 1]`` images and the models normalise internally, so exports take ``[0, 1]``
    images too.

    Raises:
        ValueError: If ``image_size`` is not two positive multiples of 32.

    """
    image_size = tuple(image_size or (256, 256))
    if len(image_size) != 2 or any(side <= 0 or side % SIZE_MULTIPLE for side in image_size):
        msg = f"image_size must be two positive multiples of {SIZE_MULTIPLE}, got {image_size}."
        raise ValueError(msg)
    return AntialiasedPreProcessor(transform=Compose([ReferenceResize(image_size)]))
