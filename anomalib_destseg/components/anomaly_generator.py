"""Synthetic anomalies as DeSTSeg's reference makes them (DRAEM-like, with its own settings).

Per image: Perlin noise with grid resolution ``(2^a, 2^b)``, ``a, b ~ U{0..5}``; the noise rotated uniformly in
``[-90, 90]`` degrees; mask ``M = noise > 0.5``; a random texture image ``A`` resized to the image size (no
augmentation); ``beta ~ U[0, 0.8)``; ``corrupted = clean * (1 - M) + (1 - beta) * A * M + beta * clean * M``.
Every image is corrupted (probability 1); an image stays normal only when its mask comes out empty. Images are in
``[0, 1]`` (before ImageNet normalisation, which the models apply afterwards).

All randomness comes from torch's global generator, so ``lightning.seed_everything`` makes runs repeatable.

Example:
    >>> import torch
    >>> generator = SyntheticAnomalyGenerator(texture_dir=None)
    >>> corrupted, masks = generator(torch.rand(2, 3, 64, 64))
    >>> corrupted.shape, masks.shape
    (torch.Size([2, 3, 64, 64]), torch.Size([2, 1, 64, 64]))
"""

import logging
from functools import lru_cache
from pathlib import Path

import torch
from anomalib.data.utils.generators.perlin import generate_perlin_noise
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF  # noqa: N812

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def list_texture_files(texture_dir: str | Path) -> list[Path]:
    """Find every image file below ``texture_dir`` (recursively, sorted for repeatability).

    Raises:
        FileNotFoundError: If the folder does not exist.
        ValueError: If it holds no image files.
    """
    root = Path(texture_dir).expanduser()
    if not root.is_dir():
        msg = f"texture_dir does not exist or is not a folder: {root}"
        raise FileNotFoundError(msg)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        msg = f"texture_dir {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})."
        raise ValueError(msg)
    return files


@lru_cache(maxsize=256)
def _read_texture(path: Path, height: int, width: int) -> torch.Tensor:
    try:
        image = decode_image(str(path), mode=ImageReadMode.RGB)
    except Exception as error:  # torchvision raises RuntimeError/ValueError for corrupt or unsupported files
        msg = f"Could not read texture image {path}: {error}"
        raise ValueError(msg) from error
    # The reference resizes with OpenCV's plain bilinear interpolation, without antialiasing.
    return TF.resize(image, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=False)


def procedural_texture(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """A stand-in texture when no texture folder is given: three Perlin-noise channels with random colours.

    Returns:
        Tensor ``[3, H, W]`` in ``[0, 1]``.
    """
    device = device or torch.device("cpu")
    noise = torch.stack([generate_perlin_noise(height, width, device=device) for _ in range(3)])
    colour = torch.rand(3, 1, 1, device=device)
    return (colour + 0.5 * noise).clamp(0, 1)


class SyntheticAnomalyGenerator:
    """Corrupt clean images with Perlin-shaped texture patches, returning the images and their masks.

    Args:
        texture_dir: Folder of texture images (the reference uses DTD). ``None`` uses :func:`procedural_texture`
            (logged once; a deviation from the reference).
        probability: Chance that an image is corrupted. The reference uses 1.
        beta_range: ``beta`` is drawn uniformly from this range; the texture's weight inside the mask is
            ``1 - beta``.
        noise_rotation: Perlin noise is rotated uniformly in ``[-noise_rotation, noise_rotation]`` degrees.
        threshold: Noise values above it form the mask.
        max_scale_exponent: Perlin grid resolutions are ``2^0 .. 2^(max_scale_exponent - 1)`` per axis.

    Raises:
        FileNotFoundError, ValueError: For a missing or empty texture folder, or bad ranges.
    """

    def __init__(
        self,
        texture_dir: str | Path | None = None,
        probability: float = 1.0,
        beta_range: tuple[float, float] = (0.0, 0.8),
        noise_rotation: float = 90.0,
        threshold: float = 0.5,
        max_scale_exponent: int = 6,
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            msg = f"anomaly probability must be in [0, 1], got {probability}."
            raise ValueError(msg)
        low, high = beta_range
        if not 0.0 <= low <= high <= 1.0:
            msg = f"beta_range must satisfy 0 <= low <= high <= 1, got {beta_range}."
            raise ValueError(msg)
        self.texture_files = list_texture_files(texture_dir) if texture_dir is not None else None
        if self.texture_files is None:
            logger.warning(
                "No texture_dir given: synthetic anomalies use procedural Perlin-colour textures instead of DTD "
                "(the reference uses DTD; pass texture_dir for the faithful recipe)."
            )
        else:
            logger.info("Synthetic anomalies use %d texture images from %s.", len(self.texture_files), texture_dir)
        self.probability = probability
        self.beta_range = (float(low), float(high))
        self.noise_rotation = noise_rotation
        self.threshold = threshold
        self.max_scale_exponent = max_scale_exponent

    def mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Draw one binary Perlin mask ``[1, H, W]`` (float 0/1)."""
        exponents = torch.randint(0, self.max_scale_exponent, (2,)).tolist()
        noise = generate_perlin_noise(height, width, scale=(2 ** exponents[0], 2 ** exponents[1]), device=device)
        angle = float(torch.empty(1).uniform_(-self.noise_rotation, self.noise_rotation))
        noise = TF.rotate(noise[None], angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
        return (noise > self.threshold).float()

    def texture(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Pick one texture ``[3, H, W]`` in ``[0, 1]``."""
        if self.texture_files is None:
            return procedural_texture(height, width, device)
        index = int(torch.randint(len(self.texture_files), (1,)))
        return _read_texture(self.texture_files[index], height, width).to(device).float() / 255.0

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrupt a batch of clean images ``[B, 3, H, W]`` in ``[0, 1]``.

        Returns:
            ``(corrupted images [B, 3, H, W], masks [B, 1, H, W] with values 0/1)``.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            msg = f"Expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}."
            raise ValueError(msg)
        batch, _, height, width = images.shape
        corrupted, masks = images.clone(), torch.zeros(batch, 1, height, width, device=images.device)
        for i in range(batch):
            if float(torch.rand(1)) >= self.probability:
                continue
            mask = self.mask(height, width, images.device)
            texture = self.texture(height, width, images.device)
            beta = float(torch.empty(1).uniform_(*self.beta_range))
            corrupted[i] = images[i] * (1 - mask) + (1 - beta) * texture * mask + beta * images[i] * mask
            masks[i] = mask
        return corrupted, masks
