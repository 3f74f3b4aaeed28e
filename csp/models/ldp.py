"""MobileVLM-V2's lightweight downsample projector (LDPv2), which transformers has no class for.

From the MobileVLM-V2 paper and its authors' module definitions (`LDPNetV2Projector`):
    x    = Linear(C_v -> C) . GELU . Linear(C -> C) applied to every patch feature
    grid = x as a 2-D map of the ViT's side x side patches
    grid = adaptive 2-D average pool of the map to 12 x 12       (576 CLIP patches -> 144 tokens)
    grid = grid + depthwise 3x3 convolution of grid (with bias)  (positional injection, "PEG")
    out  = grid flattened row by row
The pooled grid is a field (`grid`) so that a tiny twin can pool its small patch grid too.
"""
from __future__ import annotations

import math

from torch import Tensor, nn


class LDPv2Projector(nn.Module):
    """Patch features (B, N, vision_width), N a square, to (B, grid^2, text_width)."""

    def __init__(self, vision_width: int, text_width: int, grid: int = 12):
        super().__init__()
        self.grid = grid
        self.linear_1 = nn.Linear(vision_width, text_width)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_width, text_width)
        self.pool = nn.AdaptiveAvgPool2d((grid, grid))
        self.peg = nn.Conv2d(text_width, text_width, kernel_size=3, stride=1, padding=1, groups=text_width, bias=True)

    def forward(self, features: Tensor) -> Tensor:
        batch, n, _ = features.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"LDPv2 needs a square patch grid, got {n} patch features")
        x = self.linear_2(self.act(self.linear_1(features)))
        grid = x.transpose(1, 2).reshape(batch, -1, side, side)
        grid = self.pool(grid)
        grid = self.peg(grid) + grid
        return grid.flatten(2).transpose(1, 2)

