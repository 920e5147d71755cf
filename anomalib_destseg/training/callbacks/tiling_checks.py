"""Refuse tiler settings the networks cannot take before a run starts, not at its first batch."""

from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_destseg.components.tiling import check_tiler


class TilingChecks(Callback):
    """Check the tiler that anomalib's ``TilerConfigurationCallback`` set against the pre-processor's image size.

    Runs in ``setup`` (fit, validate, test and predict), after anomalib's callback has set ``model.tiler``; without
    a tiler it does nothing. See :func:`~anomalib_destseg.components.tiling.check_tiler` for what is refused.

    Example:
        >>> from anomalib.callbacks import TilerConfigurationCallback
        >>> from anomalib.engine import Engine
        >>> tiling = TilerConfigurationCallback(enable=True, tile_size=512, stride=512)
        >>> Engine(callbacks=[tiling]).fit(DeSTSeg(), datamodule=datamodule)  # doctest: +SKIP
        ValueError: Tiling: tile_size 512x512 is larger than the images, which the pre-processor resizes to 256x256...

    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the tiler, if any."""
        del trainer, stage
        tiler = getattr(pl_module.model, "tiler", None)
        if tiler is not None:
            check_tiler(tiler, pl_module.image_size)
