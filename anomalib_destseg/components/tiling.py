"""anomalib's tiler on DeSTSeg and PFADSeg: its settings checked against what the networks take, and kept as data.

anomalib's :class:`~anomalib.callbacks.TilerConfigurationCallback` puts a :class:`~anomalib.data.utils.tiler.Tiler`
on the torch model (``model.model.tiler``). The models then cut every pre-processed image into tiles, run the
networks on the tiles and put the tiles' anomaly maps back together (overlaps averaged; anomalib's ``mode`` says how
an image that the tiles do not fit exactly is enlarged: zero ``padding`` or ``interpolation``). Training cuts the
clean images into tiles before the synthetic anomalies are made, so every tile is one training sample.

Three settings cannot work and are refused before anything runs (:func:`check_tiler`): tile sides that are not
multiples of 32 (the networks' input), a tile larger than the image, and ``remove_border_count`` > 0 (anomalib's
tiler drops that border from the tiles at the image's edge too, so a frame around every image would get no score).

The tiler's settings are saved in checkpoints (:func:`tiler_settings`) so that a model loaded from a tiled run,
and its exports, tile as it was trained.

Example:
    >>> from anomalib.data.utils.tiler import Tiler
    >>> check_tiler(Tiler(tile_size=128, stride=128), image_size=(256, 256))
    >>> check_tiler(Tiler(tile_size=100, stride=100), image_size=(256, 256))
    Traceback (most recent call last):
    ...
    ValueError: Tiling: tile_size 100x100 cannot go through the networks, ... use e.g. tile_size=96 or 128.
    >>> tiler_settings(Tiler(tile_size=128, stride=64))
    {'tile_size': [128, 128], 'stride': [64, 64], 'remove_border_count': 0, 'mode': 'padding'}

"""

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from anomalib.data.utils.tiler import ImageUpscaleMode, Tiler

from .input_size import SIZE_MULTIPLE

logger = logging.getLogger(__name__)

TILER_CHECKPOINT_KEY = "tiler"
"""Checkpoint entry holding :func:`tiler_settings` of a tiled model."""


def check_tiler(tiler: Tiler, image_size: Sequence[int] | None) -> None:
    """Raise a ``ValueError`` naming the setting and the fix unless ``tiler`` can tile ``image_size`` images.

    Args:
        tiler: anomalib's tiler, as the callback made it.
        image_size: ``(height, width)`` of the images the model receives (the pre-processor's size), or ``None``
            when unknown (then only the tile size itself is checked).

    Raises:
        ValueError: For tile sides that are not multiples of 32, a tile larger than the image, or a
            ``remove_border_count`` > 0.

    """
    tile = (tiler.tile_size_h, tiler.tile_size_w)
    if any(side % SIZE_MULTIPLE for side in tile):
        suggestion = " or ".join(str(side) for side in _nearest_multiples(min(tile)))
        msg = (
            f"Tiling: tile_size {tile[0]}x{tile[1]} cannot go through the networks, whose input sides must be "
            f"multiples of {SIZE_MULTIPLE}; use e.g. tile_size={suggestion}."
        )
        raise ValueError(msg)
    if image_size is not None and (tile[0] > image_size[0] or tile[1] > image_size[1]):
        msg = (
            f"Tiling: tile_size {tile[0]}x{tile[1]} is larger than the images, which the pre-processor resizes to "
            f"{image_size[0]}x{image_size[1]}; use a tile_size of at most that, or a larger image_size "
            "(e.g. DeSTSeg.configure_pre_processor((512, 512)))."
        )
        raise ValueError(msg)
    if tiler.remove_border_count:
        border = tiler.remove_border_count
        msg = (
            f"Tiling: remove_border_count={border} leaves pixels without an anomaly score: anomalib's tiler drops "
            f"{border} pixels at every tile edge, the image's own edges included, so a {border}-pixel frame around "
            "every image (and the gaps between tiles, where the stride exceeds tile_size - 2 * remove_border_count) "
            "would score 0. Use remove_border_count=0; overlapping tiles (stride < tile_size) average their seams."
        )
        raise ValueError(msg)


def fill_default_stride(callbacks: Iterable[Any]) -> None:
    """Give an enabled ``TilerConfigurationCallback`` without a stride its documented default, the tile size.

    anomalib 2.7's callback documents ``stride=None`` as "uses tile_size", but its ``Tiler`` then fails with an
    ``AttributeError`` (``'Tiler' object has no attribute 'stride_h'``). The models call this before the callback
    runs, so ``TilerConfigurationCallback(enable=True, tile_size=128)`` tiles without overlap as documented.
    """
    from anomalib.callbacks import TilerConfigurationCallback

    for callback in callbacks:
        if isinstance(callback, TilerConfigurationCallback) and callback.enable and callback.stride is None:
            callback.stride = callback.tile_size
            logger.info("Tiling: no stride given, so stride = tile_size = %s (tiles without overlap).", callback.stride)


def tiler_settings(tiler: Tiler) -> dict[str, Any]:
    """The tiler's settings as plain data (for checkpoints)."""
    return {
        "tile_size": [tiler.tile_size_h, tiler.tile_size_w],
        "stride": [tiler.stride_h, tiler.stride_w],
        "remove_border_count": tiler.remove_border_count,
        "mode": ImageUpscaleMode(tiler.mode).value,
    }


def tiler_from_settings(settings: dict[str, Any]) -> Tiler:
    """The tiler that :func:`tiler_settings` describes."""
    return Tiler(
        tile_size=tuple(settings["tile_size"]),
        stride=tuple(settings["stride"]),
        remove_border_count=int(settings["remove_border_count"]),
        mode=ImageUpscaleMode(settings["mode"]),
    )


def _nearest_multiples(side: int) -> list[int]:
    lower = max(SIZE_MULTIPLE, side // SIZE_MULTIPLE * SIZE_MULTIPLE)
    return sorted({lower, lower + SIZE_MULTIPLE})
