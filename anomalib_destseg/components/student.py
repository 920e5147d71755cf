"""The denoising student: a ResNet-18 encoder trained from scratch and a decoder without skip connections.

Example:
    >>> import torch
    >>> encoder, decoder = StudentEncoder(), StudentDecoder()
    >>> [s.shape[1] for s in decoder(encoder(torch.rand(2, 3, 256, 256))[-1])]
    [64, 128, 256]

"""

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision.models import resnet18

from .resnet_blocks import basic_stage, init_resnet_weights


class StudentEncoder(nn.Module):
    """ResNet-18 (all four stages) with random weights.

    torchvision's initialisation: Kaiming-normal (fan_out) convolutions, and the last BatchNorm of every residual
    block zero-initialised (``zero_init_residual``), as timm does for the reference.
    """

    def __init__(self) -> None:
        super().__init__()
        trunk = resnet18(weights=None, zero_init_residual=True)
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return E1..E4 (64@H/4, 128@H/8, 256@H/16, 512@H/32)."""
        e1 = self.layer1(self.stem(images))
        e2 = self.layer2(e1)
        e3 = self.layer3(e2)
        return [e1, e2, e3, self.layer4(e3)]


class StudentDecoder(nn.Module):
    """Four stages of two BasicBlocks (512->512, 512->256, 256->128, 128->64) with x2 bilinear upsampling between.

    It sees only the deepest encoding (no skip connections) and reconstructs the teacher's three levels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stage4 = basic_stage(512, 512)
        self.stage3 = basic_stage(512, 256)
        self.stage2 = basic_stage(256, 128)
        self.stage1 = basic_stage(128, 64)
        init_resnet_weights(self)

    @staticmethod
    def _upsample(features: torch.Tensor) -> torch.Tensor:
        return F.interpolate(features, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward(self, bottleneck: torch.Tensor) -> list[torch.Tensor]:
        """Decode a 512-channel 1/32 map into S1, S2, S3 (finest first, shaped like the teacher's levels)."""
        s3 = self.stage3(self._upsample(self.stage4(bottleneck)))
        s2 = self.stage2(self._upsample(s3))
        s1 = self.stage1(self._upsample(s2))
        return [s1, s2, s3]
