"""The reference's per-category rotation of clean training images.

Policies: ``"none"``; ``"small"`` (uniform +-5 degrees); ``"quarter"`` (a random multiple of 90 degrees, then
+-5 degrees). Rotation is bilinear and fills the uncovered corners with grey 114/255. ``"auto"`` picks the MVTec AD
category's policy from :data:`MVTEC_ROTATION` and ``"none"`` for any other dataset.

Example:
    >>> resolve_rotation("auto", "bottle")
    'quarter'
    >>> resolve_rotation("auto", None)
    'none'

"""

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF  # noqa: N812

ROTATION_POLICIES = ("auto", "none", "small", "quarter")
SMALL_ANGLE = 5.0
FILL = 114 / 255

MVTEC_ROTATION: dict[str, str] = {
    **dict.fromkeys(("capsule", "metal_nut", "pill", "toothbrush", "transistor"), "none"),
    **dict.fromkeys(("wood", "zipper", "cable"), "small"),
    **dict.fromkeys(("bottle", "grid", "hazelnut", "leather", "tile", "carpet", "screw"), "quarter"),
}


def check_rotation(policy: str) -> str:
    """Return ``policy`` if it is known, else raise a ``ValueError`` listing the choices."""
    if policy not in ROTATION_POLICIES:
        msg = f"rotation must be one of {ROTATION_POLICIES}, got {policy!r}."
        raise ValueError(msg)
    return policy


def resolve_rotation(policy: str, category: str | None) -> str:
    """Turn ``"auto"`` into the category's policy; other policies are returned unchanged."""
    check_rotation(policy)
    if policy != "auto":
        return policy
    return MVTEC_ROTATION.get(str(category), "none") if category is not None else "none"


def rotate_batch(images: torch.Tensor, policy: str) -> torch.Tensor:
    """Rotate each image of ``[B, C, H, W]`` by an angle drawn from ``policy`` (``"none"`` returns the input)."""
    if policy == "none":
        return images
    if policy not in {"small", "quarter"}:
        msg = f"Cannot rotate with unresolved policy {policy!r}; call resolve_rotation first."
        raise ValueError(msg)
    rotated = []
    for image in images:
        angle = float(torch.empty(1).uniform_(-SMALL_ANGLE, SMALL_ANGLE))
        if policy == "quarter":
            angle += 90.0 * int(torch.randint(4, (1,)))
        rotated.append(TF.rotate(image, angle, interpolation=InterpolationMode.BILINEAR, fill=FILL))
    return torch.stack(rotated)
