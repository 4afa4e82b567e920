"""DARTS' network skeleton and its discrete cell, shared by the search supernet (`src/nas/`)
and the searched networks (`src/models/darts_net.py`)."""

from __future__ import annotations

import torch
from torch import nn

from src.kernels.depthwise import has_hooks
from src.layers.blocks import NEGATIVE_SLOPE, ConvBNAct
from src.layers.genotype import Genotype
from src.layers.ops import FactorizedReduce, make_op


def default_reductions(n_cells: int) -> list[int]:
    """The paper's layout (cells 1, 5 and 13 of 16) scaled to another depth."""
    return sorted({min(n_cells - 1, round(r * n_cells / 16)) for r in (0, 4, 12)})


def cell_stack(in_channels: int, C: int, stem_multiplier: int, n_cells: int, reductions,
               make_cell, negative_slope: float = NEGATIVE_SLOPE
               ) -> tuple[nn.Module, nn.ModuleList, int]:
    """A k=3 stem to `stem_multiplier * C` channels, then `n_cells` cells, each fed by the two
    before it, with the cell width doubling at each reduction cell.

    `make_cell(C_pp, C_p, C, reduction, reduction_prev)` builds one cell, whose output has
    `cell.out_channels` channels. Returns (stem, cells, channels of the last cell).
    """
    C_curr = stem_multiplier * C
    stem = ConvBNAct(in_channels, C_curr, 3, padding=1, negative_slope=negative_slope)
    C_pp, C_p, C_curr = C_curr, C_curr, C
    cells = nn.ModuleList()
    reduction_prev = False
    for i in range(n_cells):
        reduction = i in reductions
        if reduction:
            C_curr *= 2
        cell = make_cell(C_pp, C_p, C_curr, reduction, reduction_prev)
        cells.append(cell)
        reduction_prev = reduction
        C_pp, C_p = C_p, cell.out_channels
    return stem, cells, C_p


def _stateless(op: nn.Module) -> bool:
    return not any(True for _ in [*op.parameters(), *op.buffers()])


class Cell(nn.Module):
    """One cell of a searched network: each intermediate node sums two ops of earlier nodes;
    the output concatenates the genotype's `concat` nodes."""

    def __init__(self, genotype: Genotype, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, negative_slope: float = NEGATIVE_SLOPE):
        super().__init__()
        self.reduction = reduction
        self.pre0 = (FactorizedReduce(C_pp, C, negative_slope=negative_slope) if reduction_prev
                     else ConvBNAct(C_pp, C, 1, negative_slope=negative_slope))
        self.pre1 = ConvBNAct(C_p, C, 1, negative_slope=negative_slope)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.out_channels = len(self.concat) * C
        self.steps = len(edges) // 2
        self.inputs = [j for _, j in edges]
        strides = [2 if reduction and j < 2 else 1 for _, j in edges]
        self.ops = nn.ModuleList(make_op(op, C, s, negative_slope=negative_slope)
                                 for (op, _), s in zip(edges, strides, strict=True))
        # An edge repeating an earlier op without parameters or buffers (pool, identity, zero:
        # deterministic functions of their input) on the same input reuses its output: the
        # medium genotype pools state 0 three times the same way.
        first: dict = {}
        self.reuse = [
            first.setdefault((op, j, s), e) if _stateless(self.ops[e]) else e
            for e, ((op, j), s) in enumerate(zip(edges, strides, strict=True))
        ]

    def _edge(self, e: int, states, outs):
        r = self.reuse[e]
        if r != e and not any(has_hooks(m) for m in self.ops[e].modules()):
            return outs[r]  # same function of the same tensor; hooked ops (thop) are called
        return self.ops[e](states[self.inputs[e]])

    def forward(self, s0, s1):
        states = [self.pre0(s0), self.pre1(s1)]
        outs: list[torch.Tensor] = []
        for i in range(self.steps):
            # one edge at a time: the second edge of a node may reuse the first's output
            outs.append(self._edge(2 * i, states, outs))
            outs.append(self._edge(2 * i + 1, states, outs))
            states.append(outs[-2] + outs[-1])
        return torch.cat([states[i] for i in self.concat], dim=1)
