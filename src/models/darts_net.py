"""The medium/large networks: a stack of 3D DARTS cells built from a searched genotype.

`DartsNet(in_channels, input_size, n_params, genotype, C=..., n_cells=..., reductions=...)`
maps [B, C_in, d, d, d] -> [B, n_params] like every network here. `genotype` is a Genotype, a
dict, or a genotype YAML written by search.py (absolute, or relative to the repository root).
C / n_cells / reductions / stem_multiplier left as None are read from the file's `network`
section, i.e. the values the model filter chose for the target FLOPs. Every bad value ends in
one ModelConfigError (GenotypeError for the genotype) naming it, before a layer is built.

The head: `head_pool=1` averages the last cell's map globally (DARTS'); `head_pool=k` averages
it to k^3 and flattens; `head_pool=0` flattens the whole map into the first dense layer, as the
small CosmoFlow net does (the paper composes its DARTS nets' "three FC layers as in the small
model"). docs/models.md compares their costs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from src.errors import GenotypeError, ModelConfigError
from src.layers.blocks import HIDDEN, NEGATIVE_SLOPE, DenseHead
from src.layers.cells import Cell, cell_stack, default_reductions
from src.layers.genotype import Genotype, load_genotype_file
from src.models import checks

# DARTS' stem width (stem_multiplier x C) where neither the config nor the file says
STEM_MULTIPLIER = 3
# DARTS' global average pool before the head, where neither the config nor the file says
HEAD_POOL = 1


def genotype_and_network(genotype) -> tuple[Genotype, dict]:
    """(the genotype, the `network` section recorded with it) from any accepted form."""
    if isinstance(genotype, Genotype):
        return genotype, {}
    if isinstance(genotype, (str, Path)):
        doc = load_genotype_file(genotype)
        return doc["genotype"], doc["network"]
    if isinstance(genotype, Mapping):
        if "genotype" in genotype:  # a whole document already loaded
            network = genotype.get("network") or {}
            inner = genotype["genotype"]
            return (inner if isinstance(inner, Genotype) else Genotype.from_dict(inner)), \
                dict(network)
        return Genotype.from_dict(genotype), {}
    raise GenotypeError(f"model.net.genotype={genotype!r}: expected a genotype file path")


def network_shape(recorded: Mapping, C, n_cells, reductions, stem_multiplier,
                  head_pool=None) -> dict:
    """C, n_cells, reductions, stem_multiplier, head_pool: the config's where set, else the
    file's."""
    def pick(key, value):
        value = value if value is not None else recorded.get(key)
        if value is None:
            raise ModelConfigError(f"model.net.{key} is null and the genotype file records no "
                                   f"network.{key}: set model.net.{key}")
        return value

    C, n_cells = checks.count("C", pick("C", C)), checks.count("n_cells", pick("n_cells", n_cells))
    if reductions is None:
        reductions = recorded.get("reductions") or default_reductions(n_cells)
    try:
        if isinstance(reductions, str):
            raise TypeError
        reductions = [checks.count("reductions", r, minimum=0) for r in reductions]
    except TypeError:
        raise ModelConfigError(f"model.net.reductions={reductions!r} must be a list of "
                               "cell indices") from None
    if any(r >= n_cells for r in reductions):
        raise ModelConfigError(f"model.net.reductions={reductions} names cells outside "
                               f"0..{n_cells - 1} (n_cells={n_cells})")
    if stem_multiplier is None:
        stem_multiplier = recorded.get("stem_multiplier", STEM_MULTIPLIER)
    if head_pool is None:
        head_pool = recorded.get("head_pool")
    return {"C": C, "n_cells": n_cells, "reductions": reductions,
            "stem_multiplier": checks.count("stem_multiplier", stem_multiplier),
            "head_pool": checks.count("head_pool", HEAD_POOL if head_pool is None else head_pool,
                                      minimum=0)}


def head_pool_layer(head_pool: int, input_size: int, n_reductions: int) -> tuple[nn.Module, int]:
    """The pool between the last cell and the head, and the voxels per channel it leaves."""
    side = int(input_size)
    for _ in range(n_reductions):  # strided ops round up: d -> ceil(d / 2)
        side = -(-side // 2)
    if head_pool == 0:
        return nn.Identity(), side ** 3
    if head_pool > side:
        raise ModelConfigError(f"model.net.head_pool={head_pool}: the last cell's map is only "
                               f"{side}^3 at input_size={input_size}")
    return nn.AdaptiveAvgPool3d(head_pool), head_pool ** 3


class DartsNet(nn.Module):
    """Stem (k=3 conv at full resolution) -> cells -> pool (see head_pool) -> DenseHead."""

    def __init__(self, in_channels: int, input_size: int, n_params: int,
                 genotype: Genotype | dict | str | Path, C: int | None = None,
                 n_cells: int | None = None, reductions: list[int] | None = None,
                 stem_multiplier: int | None = None, hidden=HIDDEN, dropout: float = 0.0,
                 negative_slope: float = NEGATIVE_SLOPE, head_pool: int | None = None,
                 output: str = "tanh"):
        super().__init__()
        genotype, recorded = genotype_and_network(genotype)
        shape = network_shape(recorded, C, n_cells, reductions, stem_multiplier, head_pool)
        hidden, dropout, negative_slope = checks.head(hidden, dropout, negative_slope)
        output = checks.output(output)
        self.genotype, self.C, self.n_cells = genotype, shape["C"], shape["n_cells"]
        self.reductions, self.input_size = shape["reductions"], input_size

        def make_cell(C_pp, C_p, C_curr, red, red_prev):
            return Cell(genotype, C_pp, C_p, C_curr, red, red_prev, negative_slope)

        self.stem, self.cells, C_p = cell_stack(in_channels, self.C, shape["stem_multiplier"],
                                                self.n_cells, self.reductions, make_cell,
                                                negative_slope)
        self.head_pool = shape["head_pool"]
        self.pool, voxels = head_pool_layer(self.head_pool, input_size,
                                            len(set(self.reductions)))
        self.head = DenseHead(C_p * voxels, n_params, hidden, dropout, negative_slope, output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(self.pool(s1).flatten(1))
