"""PFADSeg's two new building blocks: the multi-scale fusion bottleneck and the adaptive level fusion.

Both are inferred from the abstract of arXiv 2501.12104 (no code or method section is public); see
``docs/pfadseg.md``. The operators below are this project's choice, not the authors'.

Example:
    >>> import torch
    >>> teacher = [torch.rand(2, 64, 64, 64), torch.rand(2, 128, 32, 32), torch.rand(2, 256, 16, 16)]
    >>> MultiScaleFusionBottleneck()(teacher).shape
    torch.Size([2, 512, 8, 8])
    >>> AdaptiveLevelFusion()(teacher, size=(64, 64)).shape
    torch.Size([2, 128, 64, 64])

"""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_destseg.components.resnet_blocks import basic_stage, conv_bn_relu, init_resnet_weights


class MultiScaleFusionBottleneck(nn.Module):
    """Fuse the teacher's three levels into the 512-channel 1/32 map the student decoder starts from.

    T1 (64@1/4) goes through two stride-2 3x3 conv+BN+ReLU (64->128->256), T2 (128@1/8) through one (128->256);
    both are concatenated with T3 (256@1/16) into 768 channels at 1/16. Two BasicBlocks, the first with stride 2 and
    a 1x1 stride-2 conv+BN shortcut, turn that into 512 channels at 1/32 (Reverse Distillation's one-class
    bottleneck pattern). ResNet initialisation (Kaiming-normal fan_out, BN weight 1 / bias 0).

    Args:
        in_channels: Channels of the three input levels, finest first.
        out_channels: Channels of the bottleneck output.

    """

    def __init__(self, in_channels: Sequence[int] = (64, 128, 256), out_channels: int = 512) -> None:
        super().__init__()
        first, second, third = in_channels
        self.level1_down = nn.Sequential(
            conv_bn_relu(first, 2 * first, stride=2),
            conv_bn_relu(2 * first, third, stride=2),
        )
        self.level2_down = conv_bn_relu(second, third, stride=2)
        self.bottleneck = basic_stage(3 * third, out_channels, num_blocks=2, stride=2)
        init_resnet_weights(self)

    @property
    def fusion_modules(self) -> list[nn.Module]:
        """The down-sampling branches (the "multi-scale fusion" part, without the bottleneck blocks)."""
        return [self.level1_down, self.level2_down]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Map ``[T1, T2, T3]`` (finest first) to ``[B, out_channels, H/32, W/32]``."""
        first, second, third = features
        fused = torch.cat([self.level1_down(first), self.level2_down(second), third], dim=1)
        return self.bottleneck(fused)


class AdaptiveLevelFusion(nn.Module):
    """ASFF-style per-pixel weighting of feature levels.

    Each level is projected by a 1x1 conv+BN+ReLU to ``width`` channels at its own resolution and upsampled
    bilinearly to the output size; a 1x1 convolution over the concatenated projections gives one logit per level
    and pixel, a softmax over levels turns them into weights, and the output is the weighted sum of the
    projections. The weight convolution starts at zero, so training starts from equal weights (1/levels).

    Args:
        in_channels: Channels of each input level, finest first.
        width: Channels of the projections and of the output.

    """

    def __init__(self, in_channels: Sequence[int] = (64, 128, 256), width: int = 128) -> None:
        super().__init__()
        self.out_channels = width
        self.projections = nn.ModuleList(conv_bn_relu(channels, width, kernel_size=1) for channels in in_channels)
        self.weight_logits = nn.Conv2d(width * len(in_channels), len(in_channels), kernel_size=1)
        init_resnet_weights(self)
        nn.init.zeros_(self.weight_logits.weight)
        nn.init.zeros_(self.weight_logits.bias)

    def _project(self, levels: Sequence[torch.Tensor], size: Sequence[int]) -> list[torch.Tensor]:
        if len(levels) != len(self.projections):
            msg = f"Expected {len(self.projections)} feature levels, got {len(levels)}."
            raise ValueError(msg)
        projected = []
        for projection, level in zip(self.projections, levels, strict=True):
            level = projection(level)
            if level.shape[-2:] != tuple(size):
                level = F.interpolate(level, size=tuple(size), mode="bilinear", align_corners=False)
            projected.append(level)
        return projected

    def _fuse(self, projected: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.softmax(self.weight_logits(torch.cat(projected, dim=1)), dim=1)
        fused = sum(weights[:, k : k + 1] * level for k, level in enumerate(projected))
        return fused, weights

    def level_weights(self, levels: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Per-pixel level weights ``[B, levels, *size]`` (non-negative, summing to 1 over dim 1)."""
        return self._fuse(self._project(levels, size))[1]

    def forward(self, levels: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Fuse levels (finest first, any resolutions) into ``[B, width, *size]``."""
        return self._fuse(self._project(levels, size))[0]
