"""Synthetic anomalies as DeSTSeg's reference makes them (DRAEM-like, with its own settings).

Per image: Perlin noise with grid resolution ``(2^a, 2^b)``, ``a, b ~ U{0..5}``; the noise rotated uniformly in
``[-90, 90]`` degrees; mask ``M = noise > 0.5``; a random texture image ``A`` resized to the image size (no
augmentation); ``beta ~ U[0, 0.8)``; ``corrupted = clean * (1 - M) + (1 - beta) * A * M + beta * clean * M``.
Every image is corrupted (probability 1); an image stays normal only when its mask comes out empty. Images are in
``[0, 1]`` (before ImageNet normalisation, which the models apply afterwards).

All randomness comes from torch's current generator; training runs the generator inside a random stream of its own
(:class:`anomalib_destseg.training.random_stream.RandomStream`), saved in checkpoints.

Texture images are read and resized with PIL (bilinear, which antialiases when shrinking), as the reference does.
Unreadable texture files are reported by name: files PIL cannot identify when the generator is created (they are
left out), files that fail to decode later (e.g. truncated ones) when they are first drawn (left out, another
texture is drawn).

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

import numpy as np
import torch
from anomalib.data.utils.generators.perlin import generate_perlin_noise
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from .image_checks import describe_unreadable, scan_images

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


class TextureReadError(ValueError):
    """A texture image cannot be read; the message names the file."""


def readable_texture_files(files: list[Path]) -> list[Path]:
    """Leave out, with a warning naming them, the files whose header PIL cannot read.

    Raises:
        ValueError: If no file is readable.

    """
    scan = scan_images(files, header_only=True)
    if not scan.unreadable:
        return files
    if len(scan.unreadable) == len(files):
        msg = f"None of the {len(files)} texture images can be read:\n{describe_unreadable(scan.unreadable)}"
        raise ValueError(msg)
    logger.warning(
        "Leaving out %d of %d texture images that cannot be read:\n%s",
        len(scan.unreadable),
        len(files),
        describe_unreadable(scan.unreadable),
    )
    bad = {path for path, _ in scan.unreadable}
    return [path for path in files if str(path) not in bad]


@lru_cache(maxsize=256)
def _read_texture(path: Path, height: int, width: int) -> torch.Tensor:
    try:
        with Image.open(path) as file:
            # As the reference: PIL's bilinear filter, which antialiases when shrinking.
            array = np.array(file.convert("RGB").resize((width, height), Image.Resampling.BILINEAR))
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError... for corrupt or truncated files
        msg = f"Could not read texture image {path}: {type(error).__name__}: {error}"
        raise TextureReadError(msg) from error
    return torch.from_numpy(array).permute(2, 0, 1)


def fit_perlin_scale(exponents: list[int], height: int, width: int) -> tuple[int, int]:
    """Perlin grid resolution ``(2^a, 2^b)``, capped at the image size rounded up to a power of two.

    anomalib's ``generate_perlin_noise`` needs at least one pixel per grid cell and fails otherwise; the cap only
    affects images smaller than 2^5 = 32 pixels on a side (never the models' inputs, which are multiples of 32).

    Example:
        >>> fit_perlin_scale([5, 2], 8, 256)
        (8, 4)

    """
    return tuple(
        min(2**exponent, 1 << (size - 1).bit_length())
        for exponent, size in zip(exponents, (height, width), strict=True)
    )


def procedural_texture(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """A stand-in texture when no texture folder is given: three Perlin-noise channels with random colours.

    Returns:
        Tensor ``[3, H, W]`` in ``[0, 1]``.

    """
    device = device or torch.device("cpu")
    noise = []
    for _ in range(3):  # grid resolutions drawn as anomalib's default does (2^0 .. 2^5 per axis, on ``device``)
        exponents = [int(torch.randint(0, 6, (1,), device=device)) for _ in range(2)]
        noise.append(
            generate_perlin_noise(height, width, scale=fit_perlin_scale(exponents, height, width), device=device)
        )
    noise = torch.stack(noise)
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
        ValueError: For a probability or blend range out of range. The texture folder is read by
            :meth:`load_textures` (when training starts), so that a model loads without it.

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
            msg = f"anomaly_probability must be in [0, 1], got {probability!r}."
            raise ValueError(msg)
        if len(beta_range) != 2 or not 0.0 <= beta_range[0] <= beta_range[1] <= 1.0:
            msg = f"beta_range must be (low, high) with 0 <= low <= high <= 1, got {beta_range!r}."
            raise ValueError(msg)
        self.texture_dir = texture_dir
        self._texture_files: list[Path] | None = None
        self._loaded = False
        self.probability = probability
        self.beta_range = (float(beta_range[0]), float(beta_range[1]))
        self.noise_rotation = noise_rotation
        self.threshold = threshold
        self.max_scale_exponent = max_scale_exponent

    def load_textures(self) -> None:
        """List the readable texture files, or announce the procedural texture (once); the first use does it too.

        Raises:
            FileNotFoundError, ValueError: For a missing or empty texture folder, or one without readable images.

        """
        self._loaded = True
        if self.texture_dir is None:
            logger.warning(
                "No texture_dir given: synthetic anomalies use procedural Perlin-colour textures instead of DTD "
                "(the reference uses DTD; pass texture_dir for the faithful recipe)."
            )
            return
        self._texture_files = readable_texture_files(list_texture_files(self.texture_dir))
        logger.info("Synthetic anomalies use %d texture images from %s.", len(self._texture_files), self.texture_dir)

    @property
    def texture_files(self) -> list[Path] | None:
        """The texture images in use (``None``: procedural textures)."""
        if not self._loaded:
            self.load_textures()
        return self._texture_files

    def mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Draw one binary Perlin mask ``[1, H, W]`` (float 0/1)."""
        exponents = torch.randint(0, self.max_scale_exponent, (2,)).tolist()
        noise = generate_perlin_noise(height, width, scale=fit_perlin_scale(exponents, height, width), device=device)
        angle = float(torch.empty(1).uniform_(-self.noise_rotation, self.noise_rotation))
        noise = TF.rotate(noise[None], angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
        return (noise > self.threshold).float()

    def texture(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Pick one texture ``[3, H, W]`` in ``[0, 1]``."""
        if self.texture_files is None:
            return procedural_texture(height, width, device)
        while True:
            index = int(torch.randint(len(self.texture_files), (1,)))
            try:
                texture = _read_texture(self.texture_files[index], height, width)
            except TextureReadError as error:
                if len(self.texture_files) == 1:
                    raise
                logger.warning("%s; leaving it out and drawing another texture.", error)
                del self.texture_files[index]
                continue
            return texture.to(device).float() / 255.0

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
