"""Blocks every network here is made of: the dense regression head, a dtype-keeping max pool,
and the conv -> BatchNorm -> LeakyReLU unit of the DARTS cells (fused on the CPU)."""

from __future__ import annotations

import torch
from torch import nn

from src.kernels import cpu_kernels
from src.kernels.depthwise import has_hooks

OUTPUT_SCALE = 1.2  # labels live in [-1, 1]; tanh * 1.2 keeps the edges reachable
# the head's last activation: tanh x OUTPUT_SCALE (MLPerf's CosmoFlow; bounded, but a large
# first update can push it where its gradient vanishes) or linear (unbounded, so it cannot
# saturate; docs/benchmarks.md "Does the small model learn?")
OUTPUTS = ("tanh", "linear")
# CosmoFlow's LeakyReLU slope and dense head, the defaults of every model config
NEGATIVE_SLOPE = 0.3
HIDDEN = (128, 64)


class DenseHead(nn.Module):
    """The dense head shared by every model: hidden layers, then n_params, then `output`
    (tanh * 1.2, or linear). `bound` is the largest |prediction| (None: unbounded)."""

    def __init__(self, in_features: int, n_params: int, hidden=HIDDEN, dropout: float = 0.0,
                 negative_slope: float = NEGATIVE_SLOPE, output: str = "tanh"):
        super().__init__()
        if output not in OUTPUTS:  # checked by src.models.checks for configs; this for callers
            raise ValueError(f"output={output!r}; choose one of {OUTPUTS}")
        self.output = output
        self.bound = OUTPUT_SCALE if output == "tanh" else None
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(negative_slope), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_params))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(torch.flatten(x, 1))
        return torch.tanh(out) * OUTPUT_SCALE if self.output == "tanh" else out


class MaxPool3dKeepDtype(nn.MaxPool3d):
    """MaxPool3d in its input's dtype. CPU autocast runs max_pool3d in fp32, so under bf16-mixed
    the net's largest activation would go to fp32 and back (docs/benchmarks.md). A max is exact
    in any dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):  # CUDA keeps the dtype
            with torch.autocast("cpu", enabled=False):
                return super().forward(x)
        return super().forward(x)


def bn_act(bn: nn.BatchNorm3d, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`act(bn(x))`; in CPU training the BatchNorm and the LeakyReLU run as one compiled kernel
    (`cpu_kernels.bn_leaky_relu`: a few passes over the tensor instead of many, and the BN
    output is not kept for the backward). Modules with hooks (thop, traffic counting) are
    called."""
    if isinstance(act, nn.LeakyReLU) and not (has_hooks(bn) or has_hooks(act)):
        y = cpu_kernels.bn_leaky_relu(x, bn, act.negative_slope)
        if y is not None:
            return y
    return act(bn(x))


def leaky_relu(negative_slope: float) -> nn.Module:
    # not in-place: the op outputs are summed by mixed ops and autograd needs them intact
    return nn.LeakyReLU(negative_slope)


class ConvBNAct(nn.Sequential):
    """Plain k^3 convolution + BN + LeakyReLU (stem, 1x1 preprocessing)."""

    def __init__(self, C_in, C_out, kernel_size=1, stride=1, padding=0, affine=True,
                 negative_slope: float = NEGATIVE_SLOPE):
        super().__init__(
            nn.Conv3d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm3d(C_out, affine=affine),
            leaky_relu(negative_slope),
        )

    def forward(self, x):
        return bn_act(self[1], self[2], self[0](x))
