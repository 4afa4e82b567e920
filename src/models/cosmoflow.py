"""The small CosmoFlow network (MLPerf HPC reference architecture), in PyTorch.

Conv blocks: Conv3d(k=3, 'same') with 32*2^i filters -> LeakyReLU(0.3) -> MaxPool3d(2), computed
as conv -> pool -> LeakyReLU: a non-decreasing activation commutes with max, so the function is
the same and the activation touches 8x fewer voxels (hence negative_slope >= 0 is required).
The number of blocks follows the input size: blocks are added while the spatial size stays
>= `min_spatial` after pooling, capped at `max_blocks` (MLPerf uses 5 blocks at 128^3,
leaving 4^3). So 32^3 -> 3 blocks (4^3), 64^3 -> 4 blocks (4^3), 128^3 -> 5 blocks (4^3),
256^3 -> 5 blocks (8^3). Then flatten -> DenseHead (128 -> 64 -> n_params, then `output`: tanh * 1.2 or linear).
"""

from __future__ import annotations

import torch
from torch import nn

from src.errors import ModelConfigError
from src.layers.blocks import HIDDEN, NEGATIVE_SLOPE, DenseHead, MaxPool3dKeepDtype
from src.models import checks


def blocks_for_size(input_size: int, min_spatial: int = 4, max_blocks: int = 5) -> int:
    """How many conv+pool blocks an input of `input_size`^3 gets (see module docstring)."""
    if input_size < 2 * min_spatial:
        raise ModelConfigError(
            f"input size {input_size}^3 is too small for the CosmoFlow net: need at least "
            f"{2 * min_spatial}^3 so one conv+pool block leaves {min_spatial}^3"
        )
    n, size = 0, input_size
    while n < max_blocks and size // 2 >= min_spatial and size % 2 == 0:
        size //= 2
        n += 1
    return n


class CosmoFlowNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        input_size: int,
        n_params: int,
        base_filters: int = 32,
        n_blocks: int | None = None,
        max_blocks: int = 5,
        min_spatial: int = 4,
        hidden=HIDDEN,
        dropout: float = 0.0,
        negative_slope: float = NEGATIVE_SLOPE,
        output: str = "tanh",
    ):
        super().__init__()
        base_filters = checks.count("base_filters", base_filters)
        max_blocks = checks.count("max_blocks", max_blocks)
        min_spatial = checks.count("min_spatial", min_spatial)
        hidden, dropout, negative_slope = checks.head(hidden, dropout, negative_slope)
        output = checks.output(output)
        if negative_slope < 0:  # pool-then-activation equals the paper's order only if monotone
            raise ModelConfigError(
                f"negative_slope={negative_slope}: the CosmoFlow net pools before its LeakyReLU, "
                "which is the same function only for negative_slope >= 0"
            )
        if n_blocks is None:
            n_blocks = blocks_for_size(input_size, min_spatial, max_blocks)
        elif input_size % 2 ** checks.count("n_blocks", n_blocks):
            raise ModelConfigError(
                f"input size {input_size}^3 cannot be pooled {n_blocks} times by 2"
            )
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(n_blocks):
            width = base_filters * 2**i
            layers += [
                nn.Conv3d(channels, width, kernel_size=3, padding=1),
                MaxPool3dKeepDtype(2),
                nn.LeakyReLU(negative_slope),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.n_blocks = n_blocks
        out_size = input_size // 2**n_blocks
        self.head = DenseHead(channels * out_size**3, n_params, hidden, dropout, negative_slope,
                              output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
