"""Find unreadable image files before a long run trips over them, and describe what anomalib will do with the rest.

anomalib 2.7 reads dataset images with PIL and converts them to RGB (``anomalib.data.utils.image.read_image``):
grayscale and RGBA images are accepted (grayscale becomes three equal channels, alpha is dropped), 16-bit images are
clipped to 8 bits by PIL's conversion (they come out almost white), and a batch of images of different sizes is
resized to its largest image before the pre-processor resizes it to the model's size (aspect ratios are not kept).
A file that PIL cannot identify fails with an error naming it, but a truncated file fails only when it is decoded,
with ``OSError: image file is truncated`` and no file name, possibly in a DataLoader worker after hours of training.
:func:`scan_images` finds such files up front.

Checks are cheap: PNG files are verified chunk by chunk (CRCs and length, no decompression), JPEG files are decoded
at 1/8 scale, other formats are decoded fully. ``header_only=True`` only parses the headers.

Example:
    >>> scan = scan_images(["missing.png"])
    >>> scan.unreadable[0][0]
    'missing.png'

"""

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)

HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
"""PIL modes whose conversion to RGB clips values to 8 bits (anomalib's ``read_image`` converts every image)."""


@dataclass
class ImageScan:
    """What :func:`scan_images` found.

    Attributes:
        unreadable: ``(path, reason)`` for every file that cannot be read.
        modes: PIL mode of each readable file, e.g. ``{"RGB": ["a.png", ...], "L": [...]}``.
        sizes: ``(width, height)`` of each readable file.

    """

    unreadable: list[tuple[str, str]] = field(default_factory=list)
    modes: dict[str, list[str]] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)

    @property
    def readable(self) -> list[str]:
        """Paths of the readable files."""
        return [path for paths in self.modes.values() for path in paths]


def inspect_image_file(path: str | Path, header_only: bool = False) -> tuple[str | None, str | None, tuple[int, int]]:
    """Try to read one image file.

    Args:
        path: The file.
        header_only: Only parse the header (finds missing, empty and non-image files, not truncated ones).

    Returns:
        ``(problem, mode, (width, height))``: ``problem`` is ``None`` for a readable file, else the reason;
        ``mode`` and the size are ``None`` and ``(0, 0)`` for an unreadable one.

    """
    try:
        with Image.open(path) as image:
            mode, size = image.mode, image.size
            if not header_only:
                if image.format == "PNG":
                    image.verify()
                else:
                    if image.format == "JPEG":
                        image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                    image.load()
    except Exception as error:
        return f"{type(error).__name__}: {error}", None, (0, 0)
    return None, mode, size


def scan_images(paths: Iterable[str | Path], header_only: bool = False) -> ImageScan:
    """Check every file of ``paths`` (duplicates once, in order) with :func:`inspect_image_file`."""
    scan = ImageScan()
    for path in dict.fromkeys(str(p) for p in paths):
        problem, mode, size = inspect_image_file(path, header_only=header_only)
        if problem is not None:
            scan.unreadable.append((path, problem))
        else:
            scan.modes.setdefault(mode, []).append(path)
            scan.sizes[size] += 1
    return scan


def describe_unreadable(unreadable: list[tuple[str, str]], limit: int = 10) -> str:
    """One line per unreadable file (at most ``limit``), then how many more there are."""
    lines = [f"  {path}: {reason}" for path, reason in unreadable[:limit]]
    if len(unreadable) > limit:
        lines.append(f"  ... and {len(unreadable) - limit} more")
    return "\n".join(lines)


def check_dataset_images(datasets: dict[str, object], image_size: tuple[int, int] | None = None) -> None:
    """Check the image and mask files of anomalib datasets before training; explain anomalib's handling of the rest.

    Args:
        datasets: ``{"train": dataset, ...}``; datasets without a ``samples`` table with ``image_path`` (e.g. not
            anomalib datasets) are skipped.
        image_size: The size the pre-processor resizes to, for the messages.

    Raises:
        ValueError: Naming every unreadable file (at most ten listed) and its split.

    """
    problems: list[tuple[str, str]] = []
    for split, dataset in datasets.items():
        samples = getattr(dataset, "samples", None)
        if samples is None or "image_path" not in getattr(samples, "columns", ()):
            continue
        images = scan_images(samples["image_path"])
        masks = [p for p in samples.get("mask_path", []) if isinstance(p, str | Path) and str(p)]
        problems += [(path, f"{split} image, {reason}") for path, reason in images.unreadable]
        problems += [(path, f"{split} mask, {reason}") for path, reason in scan_images(masks).unreadable]
        _explain_handling(split, images, image_size)
    if problems:
        msg = (
            f"{len(problems)} dataset file(s) cannot be read as images; remove or replace them:\n"
            f"{describe_unreadable(problems)}"
        )
        raise ValueError(msg)


def _explain_handling(split: str, scan: ImageScan, image_size: tuple[int, int] | None) -> None:
    """Log what anomalib's reader does with grayscale, 16-bit and differently sized images."""
    target = f"{image_size[0]}x{image_size[1]}" if image_size else "the model's size"
    high = [path for mode, paths in scan.modes.items() if mode in HIGH_BIT_DEPTH_MODES for path in paths]
    if high:
        logger.warning(
            "%d %s image(s) have more than 8 bits per channel (e.g. %s); anomalib's RGB conversion clips them to "
            "0..255, which usually makes them nearly white. Convert them to 8-bit first.",
            len(high),
            split,
            ", ".join(high[:3]),
        )
    gray = scan.modes.get("L", []) + scan.modes.get("LA", [])
    if gray:
        logger.info("%d %s image(s) are grayscale (e.g. %s); anomalib reads them as RGB.", len(gray), split, gray[0])
    ratios = {round(width / height, 3) for width, height in scan.sizes}
    if len(ratios) > 1:
        logger.warning(
            "%s images have %d different aspect ratios (sizes %s); anomalib resizes each batch to its largest image "
            "and the pre-processor resizes to %s, so images are stretched.",
            split,
            len(ratios),
            ", ".join(f"{w}x{h}" for (w, h), _ in scan.sizes.most_common(4)),
            target,
        )
