"""A small generated dataset in MVTec AD's layout, for the demo and the tests (no download needed).

Normal images show a bright disk ("a part seen from above") with a faint ring pattern and sensor noise; defective
images add one or two dark or coloured blobs or a scratch inside the disk, with pixel-exact masks.

Layout (what ``anomalib.data.MVTecAD(root=root, category=category)`` and ``anomalib.data.Folder`` read)::

    root/category/train/good/000.png
    root/category/test/good/000.png
    root/category/test/defect/000.png
    root/category/ground_truth/defect/000_mask.png

Example:
    >>> path = make_synthetic_dataset("datasets/synthetic", image_size=64)  # doctest: +SKIP

"""

from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_CATEGORY = "synthetic"


def _normal_image(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    centre = 0.5 + rng.normal(0, 0.01, 2)
    radius = np.hypot(yy - centre[0], xx - centre[1])
    disk = (radius < 0.38).astype(np.float32)
    rings = 0.08 * np.cos(radius * 60 + rng.uniform(0, 2 * np.pi))
    base = np.stack([0.15 + disk * (0.65 + rings)] * 3, axis=-1)
    base *= np.array([1.0, 0.97, 0.9]) * rng.uniform(0.95, 1.05)
    return np.clip(base + rng.normal(0, 0.02, base.shape), 0, 1)


def _defect_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(rng.integers(1, 3)):
        angle = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(0.0, 0.25)
        cy, cx = 0.5 + distance * np.sin(angle), 0.5 + distance * np.cos(angle)
        if rng.random() < 0.7:  # an ellipse
            ry, rx = rng.uniform(0.03, 0.09, 2)
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        else:  # a scratch: a thin band along a random direction
            theta = rng.uniform(0, np.pi)
            along = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
            across = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
            mask |= (np.abs(along) < rng.uniform(0.08, 0.18)) & (np.abs(across) < 0.012 + 1.5 / size)
    return mask


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path)


def make_synthetic_dataset(
    root: str | Path,
    category: str = DEFAULT_CATEGORY,
    image_size: int = 128,
    num_train: int = 32,
    num_test_good: int = 8,
    num_test_defect: int = 8,
    seed: int = 0,
) -> Path:
    """Write the dataset (overwriting files of the same names) and return ``root/category``.

    Args:
        root: Dataset root (the MVTecAD ``root``).
        category: Sub-folder name (the MVTecAD ``category``).
        image_size: Side of the square images in pixels.
        num_train: Normal training images.
        num_test_good: Normal test images.
        num_test_defect: Defective test images (each with a mask).
        seed: Seed of the generator; the same seed writes the same files.

    Returns:
        Path of the category folder.

    Raises:
        ValueError: If a count or the size is too small to make a usable dataset.

    """
    if image_size < 32 or min(num_train, num_test_good, num_test_defect) < 1:
        msg = "image_size must be >= 32 and every image count >= 1."
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    folder = Path(root) / category
    for split, count in (("train/good", num_train), ("test/good", num_test_good)):
        for index in range(count):
            _save(_normal_image(rng, image_size), folder / split / f"{index:03d}.png")
    for index in range(num_test_defect):
        image, mask = _normal_image(rng, image_size), _defect_mask(rng, image_size)
        colour = rng.choice([np.array([0.1, 0.08, 0.05]), np.array([0.55, 0.3, 0.1]), np.array([0.2, 0.3, 0.6])])
        image[mask] = 0.3 * image[mask] + 0.7 * colour
        _save(image, folder / "test" / "defect" / f"{index:03d}.png")
        _save(mask.astype(np.float32), folder / "ground_truth" / "defect" / f"{index:03d}_mask.png")
    return folder
