"""Checks of anomalib's tiler settings, the stride default, and the settings kept in checkpoints."""

import pytest
from anomalib.callbacks import TilerConfigurationCallback
from anomalib.data.utils.tiler import ImageUpscaleMode, Tiler

from anomalib_destseg.components.tiling import check_tiler, fill_default_stride, tiler_from_settings, tiler_settings


@pytest.mark.parametrize(
    ("tiler", "image_size"),
    [
        (Tiler(tile_size=128, stride=128), (256, 256)),
        (Tiler(tile_size=(64, 96), stride=(32, 48)), (64, 96)),  # a tile as large as the image
        (Tiler(tile_size=96, stride=64), (200, 300)),  # tiles that do not fit: the tiler pads
        (Tiler(tile_size=32, stride=32), None),
    ],
)
def test_settings_the_networks_can_take_pass(tiler: Tiler, image_size: tuple[int, int] | None) -> None:
    check_tiler(tiler, image_size)


@pytest.mark.parametrize(
    ("tiler", "image_size", "message"),
    [
        (Tiler(tile_size=100, stride=100), None, r"tile_size 100x100 .* multiples of 32; use e.g. tile_size=96 or 128"),
        (Tiler(tile_size=(128, 80), stride=64), (256, 256), r"tile_size 128x80 .* multiples of 32"),
        (Tiler(tile_size=20, stride=20), None, r"use e.g. tile_size=32 or 64"),
        (Tiler(tile_size=256, stride=256), (128, 256), r"tile_size 256x256 is larger than the images, .* 128x256"),
        (Tiler(tile_size=64, stride=64, remove_border_count=8), (256, 256), r"remove_border_count=8 .* 8-pixel frame"),
    ],
)
def test_settings_that_cannot_work_are_named_with_the_fix(tiler: Tiler, image_size, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_tiler(tiler, image_size)


def test_an_enabled_callback_without_stride_gets_the_tile_size() -> None:
    missing = TilerConfigurationCallback(enable=True, tile_size=(64, 96))
    given = TilerConfigurationCallback(enable=True, tile_size=64, stride=32)
    disabled = TilerConfigurationCallback(enable=False, tile_size=64)
    with pytest.raises(AttributeError, match="stride_h"):  # anomalib's own behaviour that this works around
        Tiler(tile_size=missing.tile_size, stride=missing.stride)
    fill_default_stride([missing, given, disabled, object()])
    assert (missing.stride, given.stride, disabled.stride) == ((64, 96), 32, None)
    tiler = Tiler(tile_size=missing.tile_size, stride=missing.stride)
    assert (tiler.stride_h, tiler.stride_w) == (64, 96)


def test_settings_survive_plain_data() -> None:
    tiler = Tiler(tile_size=(64, 96), stride=(32, 48), mode=ImageUpscaleMode.INTERPOLATION)
    settings = tiler_settings(tiler)
    assert settings == {"tile_size": [64, 96], "stride": [32, 48], "remove_border_count": 0, "mode": "interpolation"}
    again = tiler_from_settings(settings)
    assert tiler_settings(again) == settings and again.mode == ImageUpscaleMode.INTERPOLATION
