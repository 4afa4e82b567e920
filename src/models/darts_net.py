"""The medium/large networks: a stack of 3D DARTS cells built from a searched genotype.

`DartsNet(in_channels, input_size, n_params, genotype=..., C=..., n_cells=..., reductions=...)`
maps [B, C_in, d, d, d] -> [B, n_params] like every network here. `genotype` is a Genotype, a
dict, or a genotype YAML written by search.py (absolute, or relative to the repository root).
C / n_cells / reductions / stem_multiplier left as None are read from the file's `network`
section, i.e. the values the model filter chose for the target FLOPs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from src.models.cosmoflow import DenseHead
from src.nas.depthwise import has_hooks
from src.nas.genotype import Genotype, load_genotype_file
from src.nas.ops import ConvBNAct, FactorizedReduce, cell_stack, make_op
from src.nas.supernet import default_reductions


class Cell(nn.Module):
    def __init__(self, genotype: Genotype, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(C_pp, C) if reduction_prev else ConvBNAct(C_pp, C, 1)
        self.pre1 = ConvBNAct(C_p, C, 1)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.out_channels = len(self.concat) * C
        self.steps = len(edges) // 2
        self.inputs = [j for _, j in edges]
        strides = [2 if reduction and j < 2 else 1 for _, j in edges]
        self.ops = nn.ModuleList(make_op(op, C, s) for (op, _), s in zip(edges, strides, strict=True))
        # An edge repeating an earlier op without parameters or buffers (pool, identity, zero:
        # deterministic functions of their input) on the same input reuses its output: the
        # medium genotype pools state 0 three times the same way.
        first: dict = {}
        self.reuse = [
            e if any(True for _ in [*self.ops[e].parameters(), *self.ops[e].buffers()])
            else first.setdefault((op, j, s), e)
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
            outs += [self._edge(2 * i, states, outs), self._edge(2 * i + 1, states, outs)]
            states.append(outs[-2] + outs[-1])
        return torch.cat([states[i] for i in self.concat], dim=1)


class DartsNet(nn.Module):
    """Stem (k=3 conv at full resolution) -> cells -> global average pool -> DenseHead."""

    def __init__(self, in_channels: int, input_size: int, n_params: int,
                 genotype: Genotype | dict | str | Path = "genotypes/medium.yaml",
                 C: int | None = None, n_cells: int | None = None,
                 reductions: list[int] | None = None, stem_multiplier: int | None = None,
                 hidden=(128, 64), dropout: float = 0.0, negative_slope: float = 0.3):
        super().__init__()
        net_rec: dict = {}
        if isinstance(genotype, (str, Path)):
            doc = load_genotype_file(genotype)
            genotype, net_rec = doc["genotype"], doc["network"]
        elif isinstance(genotype, dict):
            if "genotype" in genotype:  # a whole document already loaded
                net_rec = genotype.get("network", {}) or {}
                genotype = genotype["genotype"]
            if not isinstance(genotype, Genotype):
                genotype = Genotype.from_dict(dict(genotype))
        C = int(C if C is not None else net_rec.get("C", 16))
        n_cells = int(n_cells if n_cells is not None else net_rec.get("n_cells", 16))
        if reductions is None:
            reductions = net_rec.get("reductions") or default_reductions(n_cells)
        reductions = [int(r) for r in reductions]
        if any(not 0 <= r < n_cells for r in reductions):
            raise ValueError(f"reductions {reductions} outside 0..{n_cells - 1}")
        stem_multiplier = int(stem_multiplier if stem_multiplier is not None
                              else net_rec.get("stem_multiplier", 3))
        self.genotype, self.C, self.n_cells = genotype, C, n_cells
        self.reductions, self.input_size = reductions, input_size

        self.stem, self.cells, C_p = cell_stack(
            in_channels, C, stem_multiplier, n_cells, reductions,
            lambda C_pp, C_p, C_curr, red, red_prev: Cell(genotype, C_pp, C_p, C_curr, red, red_prev))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = DenseHead(C_p, n_params, tuple(hidden), dropout, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(self.pool(s1).flatten(1))
