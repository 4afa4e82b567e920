"""The small CosmoFlow network (MLPerf HPC reference architecture), in PyTorch.

Conv blocks: Conv3d(k=3, 'same') with 32*2^i filters -> LeakyReLU(0.3) -> MaxPool3d(2), computed
as conv -> pool -> LeakyReLU: a non-decreasing activation commutes with max, so the function is
the same and the activation touches 8x fewer voxels (hence negative_slope >= 0 is required).
The number of blocks follows the input size: blocks are added while the spatial size stays
>= `min_spatial` after pooling, capped at `max_blocks` (MLPerf uses 5 blocks at 128^3,
leaving 4^3). So 32^3 -> 3 blocks (4^3), 64^3 -> 4 blocks (4^3), 128^3 -> 5 blocks (4^3),
256^3 -> 5 blocks (8^3). Then flatten -> DenseHead (128 -> 64 -> n_params, tanh * 1.2).
"""

from __future__ import annotations

import torch
from torch import nn

OUTPUT_SCALE = 1.2  # labels live in [-1, 1]; tanh * 1.2 keeps the edges reachable


class ModelConfigError(ValueError):
    """A model that cannot be built for the requested input."""


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


class DenseHead(nn.Module):
    """The 3-layer dense head shared by every model: hidden layers, then n_params, tanh*1.2."""

    def __init__(self, in_features: int, n_params: int, hidden=(128, 64), dropout: float = 0.0,
                 negative_slope: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(negative_slope), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_params))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layers(torch.flatten(x, 1))) * OUTPUT_SCALE


class MaxPool3dKeepDtype(nn.MaxPool3d):
    """MaxPool3d in its input's dtype. CPU autocast runs max_pool3d in fp32: under bf16-mixed
    the net's largest activation went to fp32 and back, 15 % of the small net's step at 64^3.
    A max is exact in any dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):  # CUDA keeps the dtype
            with torch.autocast("cpu", enabled=False):
                return super().forward(x)
        return super().forward(x)


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
        hidden=(128, 64),
        dropout: float = 0.0,
        negative_slope: float = 0.3,
    ):
        super().__init__()
        if negative_slope < 0:  # pool-then-activation equals the paper's order only if monotone
            raise ModelConfigError(
                f"negative_slope={negative_slope}: the CosmoFlow net pools before its LeakyReLU, "
                "which is the same function only for negative_slope >= 0"
            )
        if n_blocks is None:
            n_blocks = blocks_for_size(input_size, min_spatial, max_blocks)
        elif input_size // 2**n_blocks < 1 or input_size % 2**n_blocks:
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
        self.head = DenseHead(channels * out_size**3, n_params, hidden, dropout, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
