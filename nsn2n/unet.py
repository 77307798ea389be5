"""A small 2-D U-Net that predicts the noise residual of the centre slice: ``f(x) = x_c - g(x)``.

Design: two 3x3 convolutions with LeakyReLU(0.1) per level (the Noise2Noise family's U-Net), max-pool
down, bilinear up-sampling followed by a 3x3 convolution, skip connections by concatenation, no
normalisation layers (batch statistics of a few crops of one volume would differ between training and
inference). The last convolution starts at zero, so the untrained network is the identity and training
starts from the noisy image rather than from noise. Inputs of any size are reflect-padded to a multiple
of ``2**depth`` and cropped back.

Inputs: ``in_channels`` slices stacked as channels, the slice to denoise in the middle (channel
``in_channels // 2``) and its neighbours on either side (2.5-D context; ``in_channels == 1`` is a plain 2-D
denoiser). The residual is taken against the middle channel, so the untrained network returns it unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResidualUNet"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
    )


class ResidualUNet(nn.Module):
    """U-Net with ``depth`` down-sampling levels and ``width * 2**level`` channels.

    Args:
        width: channels at full resolution.
        depth: number of down-sampling levels (>= 1).
        in_channels: slices in the input (odd): the slice to denoise and ``in_channels // 2`` neighbours
            on either side.
    """

    def __init__(self, width: int = 32, depth: int = 3, in_channels: int = 1) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"ResidualUNet needs width >= 1 and depth >= 1, got {width}, {depth}")
        if in_channels < 1 or in_channels % 2 == 0:
            raise ValueError(f"ResidualUNet needs an odd number of input slices, got {in_channels}")
        self.width = width
        self.depth = depth
        self.in_channels = in_channels
        self.centre = in_channels // 2
        channels = [width * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList([_block(in_channels, channels[0])])
        self.encoders.extend(_block(channels[i], channels[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(nn.Conv2d(channels[i + 1], channels[i], 3, padding=1) for i in range(depth))
        self.decoders = nn.ModuleList(_block(2 * channels[i], channels[i]) for i in range(depth))
        self.head = nn.Conv2d(channels[0], 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def multiple(self) -> int:
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, 1, H, W): the middle slice denoised."""
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.multiple, (-w) % self.multiple
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x
        skips = []
        y = padded
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                y = F.max_pool2d(y, 2)
            y = encoder(y)
            skips.append(y)
        for level in reversed(range(self.depth)):
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            y = F.leaky_relu(self.ups[level](y), 0.1)
            y = self.decoders[level](torch.cat([y, skips[level]], dim=1))
        noise = self.head(y)
        out = padded[:, self.centre : self.centre + 1] - noise
        return out[..., :h, :w]
