"""What the networks take: RGB batches whose sides are multiples of 32 (the student's deepest level is 1/32)."""

import torch

SIZE_MULTIPLE = 32


def check_images(images: torch.Tensor) -> None:
    """Raise a ``ValueError`` naming the problem unless ``images`` is ``[B, 3, H, W]`` with H, W multiples of 32."""
    if images.ndim != 4:
        msg = f"Expected a batch of images [B, 3, H, W], got a tensor of shape {tuple(images.shape)}."
        raise ValueError(msg)
    channels, height, width = images.shape[1:]
    if channels != 3:
        msg = f"Expected RGB images with 3 channels, got {channels} (grayscale or RGBA images must be converted)."
        raise ValueError(msg)
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        msg = (
            f"Image size {height}x{width} is not a multiple of {SIZE_MULTIPLE} in both directions; "
            "resize to e.g. 256x256 (the pre-processor's image_size)."
        )
        raise ValueError(msg)
