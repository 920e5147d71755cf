"""Train in the channels-last memory layout, which oneDNN's (CPU) and cuDNN's convolutions prefer, above all in bf16."""

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class ChannelsLast(Callback):
    """Put the torch model's weights in channels-last (NHWC) layout when fitting starts.

    A convolution whose weights are channels-last returns channels-last outputs, so the layout spreads through the
    network from its first convolution on; the inputs need no change. Same arithmetic as the default layout (results
    differ only by floating-point rounding); checkpoints load in either layout. Opt-in:
    ``Engine(callbacks=[ChannelsLast()])`` or ``--trainer.callbacks anomalib_destseg.training.callbacks.ChannelsLast``.

    Example:
        >>> from anomalib_destseg import DeSTSeg
        >>> model = DeSTSeg()
        >>> ChannelsLast().on_fit_start(None, model)
        >>> model.model.segmentation_network.head[1].weight.is_contiguous(memory_format=torch.channels_last)
        True

    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Convert the torch model's 4-D parameters and buffers to channels-last."""
        del trainer
        pl_module.model.to(memory_format=torch.channels_last)
