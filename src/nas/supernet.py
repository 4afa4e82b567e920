"""The DARTS super-network in 3D: every edge of a cell is a softmax-weighted mix of all ops.

Architecture weights (alphas, and betas with edge normalisation) are nn.Parameters held in
`self.arch`, apart from the network weights, so the two optimisers never share a tensor and a
state_dict still checkpoints both.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.errors import ConfigError
from src.layers.blocks import HIDDEN, NEGATIVE_SLOPE, ConvBNAct, DenseHead
from src.layers.cells import cell_stack, default_reductions
from src.layers.genotype import Genotype
from src.layers.ops import PRIMITIVES, FactorizedReduce, make_op
from src.nas.derive import derive_genotype, edge_softmax


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c = x.shape[:2]
    return x.view(b, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class MixedOp(nn.Module):
    """sum_o softmax(alpha)_o * o(x). With partial channels (PC-DARTS) only 1/k of the channels
    go through the ops, the rest bypass them, which cuts activation memory about k-fold."""

    def __init__(self, C: int, stride: int, pc_k: int = 1,
                 negative_slope: float = NEGATIVE_SLOPE):
        super().__init__()
        if C % pc_k:
            raise ConfigError(f"partial channels: C={C} is not divisible by pc_k={pc_k}")
        self.stride, self.pc_k = stride, pc_k
        c = C // pc_k
        ops = []
        for name in PRIMITIVES:
            op = make_op(name, c, stride, affine=False, negative_slope=negative_slope)
            if "pool" in name:
                # as in DARTS: pools carry no BN of their own, so their scale would drift
                op = nn.Sequential(op, nn.BatchNorm3d(c, affine=False))
            ops.append(op)
        self.ops = nn.ModuleList(ops)
        if pc_k > 1 and stride > 1:
            self.bypass_pool = nn.MaxPool3d(3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.pc_k == 1:
            return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))
        c = x.shape[1] // self.pc_k
        xa, xb = x[:, :c], x[:, c:]
        out = sum(w * op(xa) for w, op in zip(weights, self.ops, strict=True))
        if self.stride > 1:
            xb = self.bypass_pool(xb)
        return channel_shuffle(torch.cat([out, xb], dim=1), self.pc_k)


class SearchCell(nn.Module):
    def __init__(self, steps, multiplier, C_pp, C_p, C, reduction, reduction_prev, pc_k=1,
                 negative_slope: float = NEGATIVE_SLOPE):
        super().__init__()
        self.reduction, self.steps, self.multiplier = reduction, steps, multiplier
        self.out_channels = multiplier * C
        slope = negative_slope
        self.pre0 = (FactorizedReduce(C_pp, C, affine=False, negative_slope=slope)
                     if reduction_prev else ConvBNAct(C_pp, C, 1, affine=False, negative_slope=slope))
        self.pre1 = ConvBNAct(C_p, C, 1, affine=False, negative_slope=slope)
        self.edges = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(MixedOp(C, stride, pc_k, slope))

    def forward(self, s0, s1, weights, edge_weights=None):
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for _ in range(self.steps):
            terms = []
            for j, h in enumerate(states):
                t = self.edges[offset + j](h, weights[offset + j])
                if edge_weights is not None:
                    t = edge_weights[offset + j] * t
                terms.append(t)
            offset += len(states)
            states.append(sum(terms))
        return torch.cat(states[-self.multiplier:], dim=1)


class SearchNetwork(nn.Module):
    """Stem -> search cells -> global average pool -> dense head (the small model's)."""

    def __init__(self, in_channels: int, n_params: int, C: int = 8, n_cells: int = 8,
                 reductions: list[int] | None = None, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, pc_k: int = 1, edge_norm: bool | None = None,
                 hidden=HIDDEN, dropout: float = 0.0, negative_slope: float = NEGATIVE_SLOPE):
        super().__init__()
        self.steps, self.multiplier = steps, multiplier
        self.reductions = list(default_reductions(n_cells) if reductions is None else reductions)
        # PC-DARTS pairs partial channels with edge normalisation to steady edge selection
        self.edge_norm = (pc_k > 1) if edge_norm is None else bool(edge_norm)
        # everything that fixes the tensors' shapes: a checkpoint records it, a resume checks it
        self.config = {"in_channels": in_channels, "n_params": n_params, "C": C,
                       "n_cells": n_cells, "reductions": self.reductions, "steps": steps,
                       "multiplier": multiplier, "stem_multiplier": stem_multiplier,
                       "pc_k": pc_k, "edge_norm": self.edge_norm, "hidden": list(hidden)}
        self.stem, self.cells, C_p = cell_stack(
            in_channels, C, stem_multiplier, n_cells, self.reductions,
            lambda C_pp, C_p, C_curr, red, red_prev: SearchCell(
                steps, multiplier, C_pp, C_p, C_curr, red, red_prev, pc_k, negative_slope),
            negative_slope)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = DenseHead(C_p, n_params, tuple(hidden), dropout, negative_slope)

        n_edges = sum(2 + i for i in range(steps))
        n_ops = len(PRIMITIVES)
        self.arch = nn.ParameterDict({
            "alphas_normal": nn.Parameter(1e-3 * torch.randn(n_edges, n_ops)),
            "alphas_reduce": nn.Parameter(1e-3 * torch.randn(n_edges, n_ops)),
        })
        if self.edge_norm:
            self.arch["betas_normal"] = nn.Parameter(1e-3 * torch.randn(n_edges))
            self.arch["betas_reduce"] = nn.Parameter(1e-3 * torch.randn(n_edges))

    # --- parameter groups -------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.arch.values())

    def named_network_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if not n.startswith("arch."))

    def network_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_network_parameters()]

    # --- forward --------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.arch
        w_normal = F.softmax(a["alphas_normal"], dim=-1)
        w_reduce = F.softmax(a["alphas_reduce"], dim=-1)
        e_normal = edge_softmax(a["betas_normal"], self.steps) if self.edge_norm else None
        e_reduce = edge_softmax(a["betas_reduce"], self.steps) if self.edge_norm else None
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, w_reduce, e_reduce)
            else:
                s0, s1 = s1, cell(s0, s1, w_normal, e_normal)
        return self.head(self.pool(s1).flatten(1))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self(x), y)

    def genotype(self, max_skip: int | None = 2) -> Genotype:
        a = self.arch
        return derive_genotype(
            a["alphas_normal"], a["alphas_reduce"], self.steps, self.multiplier,
            a["betas_normal"] if self.edge_norm else None,
            a["betas_reduce"] if self.edge_norm else None,
            max_skip=max_skip,
        )

    def arch_state(self) -> dict[str, list]:
        """The raw architecture parameters (alphas, betas) at full precision: what a genotype
        file records so the derivation can be re-checked from it."""
        return {name: p.detach().cpu().double().tolist() for name, p in self.arch.items()}

    def alphas_table(self) -> dict[str, list[list[float]]]:
        """Softmaxed alphas per cell type, rows = edges, columns = PRIMITIVES (for logs)."""
        out = {}
        for kind in ("normal", "reduce"):
            w = F.softmax(self.arch[f"alphas_{kind}"].detach(), dim=-1)
            out[kind] = [[round(float(v), 4) for v in row] for row in w]
            if self.edge_norm:
                e = edge_softmax(self.arch[f"betas_{kind}"].detach(), self.steps)
                out[f"edges_{kind}"] = [round(float(v), 4) for v in e]
        return out
