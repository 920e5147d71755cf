"""DeSTSeg's segmentation network: two residual blocks, ASPP without a 1x1 branch, and a sigmoid head.

Example:
    >>> import torch
    >>> net = SegmentationNetwork(in_channels=448)
    >>> net(torch.rand(2, 448, 64, 64)).shape
    torch.Size([2, 1, 64, 64])

"""

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .resnet_blocks import basic_stage, conv_bn_relu, init_resnet_weights


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as DeSTSeg uses it.

    Branches: global average pooling (1x1 conv, BN, ReLU, upsampled back) and three 3x3 convolutions with dilation
    6, 12 and 18; their concatenation is projected by a 3x3 conv, BN, ReLU. Unlike torchvision's ASPP there is no 1x1
    branch and no dropout. The pooling branch's BatchNorm sees one value per channel and image, so training needs a
    batch of at least two images.
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 256, dilations: tuple[int, ...] = (6, 12, 18)):
        super().__init__()
        self.pool_branch = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.dilated_branches = nn.ModuleList(
            conv_bn_relu(in_channels, out_channels, kernel_size=3, dilation=d) for d in dilations
        )
        self.project = conv_bn_relu(out_channels * (len(dilations) + 1), out_channels, kernel_size=3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Apply the four branches and project their concatenation."""
        pooled = F.interpolate(
            self.pool_branch(features), size=features.shape[-2:], mode="bilinear", align_corners=False
        )
        branches = [pooled, *(branch(features) for branch in self.dilated_branches)]
        return self.project(torch.cat(branches, dim=1))


class SegmentationNetwork(nn.Module):
    """Residual blocks (in->256), ASPP (256->256) and head (3x3 conv, BN, ReLU, 1x1 conv, sigmoid).

    Initialised as the reference: Kaiming-normal (fan_out) convolutions and BN weight 1 / bias 0 in the residual
    blocks only; ASPP and the head keep PyTorch's default initialisation.

    Args:
        in_channels: Channels of the input (448 for DeSTSeg's teacher x student product).
        width: Channels inside the network.

    """

    def __init__(self, in_channels: int = 448, width: int = 256) -> None:
        super().__init__()
        self.residual = basic_stage(in_channels, width)
        self.aspp = ASPP(width, width)
        self.head = nn.Sequential(conv_bn_relu(width, width), nn.Conv2d(width, 1, kernel_size=1))
        # As the reference: only the residual blocks get Kaiming initialisation. ASPP and the head keep PyTorch's
        # default (Kaiming-uniform, a=sqrt(5)); with Kaiming there too, half of the initial logits exceed |10| on
        # real features and stage 2 starts saturated.
        init_resnet_weights(self.residual)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The head's output before the sigmoid, ``[B, 1, H, W]``."""
        return self.head(self.aspp(self.residual(features)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the anomaly probability map ``[B, 1, H, W]`` at the input's resolution, in float32.

        The sigmoid runs in float32 even when the head's convolution ran in bf16 or fp16 under autocast: in bf16 it
        would round every logit above 6.25 to a probability of exactly 1.0 (no focal-loss gradient there, tied
        maps). A no-op in float32, invisible to export.
        """
        return torch.sigmoid(self.logits(features).float())
