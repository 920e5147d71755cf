"""ResNet building blocks shared by the decoder, the segmentation network and the PFADSeg bottleneck.

torchvision's ``BasicBlock`` (conv3x3 without bias, BN, ReLU, conv3x3, BN, add, ReLU) is used as is; this module
adds the stage builder with the 1x1 conv + BN shortcut the reference uses when channels (or stride) change, and the
ResNet weight initialisation.

Example:
    >>> import torch
    >>> stage = basic_stage(64, 32, num_blocks=2)
    >>> stage(torch.rand(2, 64, 8, 8)).shape
    torch.Size([2, 32, 8, 8])

"""

from torch import nn
from torchvision.models.resnet import BasicBlock


def basic_stage(in_channels: int, out_channels: int, num_blocks: int = 2, stride: int = 1) -> nn.Sequential:
    """Stack ``num_blocks`` BasicBlocks; the first gets a 1x1 conv + BN shortcut when shape changes.

    Args:
        in_channels: Channels entering the stage.
        out_channels: Channels leaving the stage.
        num_blocks: Number of BasicBlocks.
        stride: Stride of the first block.

    Returns:
        The stage as ``nn.Sequential``.

    """
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    blocks = [BasicBlock(in_channels, out_channels, stride=stride, downsample=shortcut)]
    blocks += [BasicBlock(out_channels, out_channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    dilation: int = 1,
) -> nn.Sequential:
    """Convolution without bias, BatchNorm and ReLU, padded to keep the size at stride 1."""
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def init_resnet_weights(module: nn.Module) -> None:
    """Initialise like torchvision's ResNet: Kaiming-normal (fan_out) convs, BN weight 1 and bias 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
