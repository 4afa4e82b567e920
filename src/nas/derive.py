"""From alphas to a genotype: the discretisation step at the end of a DARTS search."""

from __future__ import annotations

import torch

from src.layers.genotype import Genotype
from src.layers.ops import PRIMITIVES


def derive_cell(
    weights: torch.Tensor,
    steps: int,
    edge_weights: torch.Tensor | None = None,
    max_skip: int | None = None,
) -> tuple[tuple[str, int], ...]:
    """Discretise one cell: per node keep the 2 incoming edges with the strongest non-none op,
    and on each kept edge its argmax non-none op.

    `weights` is [n_edges, n_ops] (softmaxed alphas); `edge_weights` ([n_edges], PC-DARTS edge
    normalisation) scales edge strengths. `max_skip` caps skip_connects in the cell: the
    weakest surplus skips are replaced by their edge's best non-skip op, the guard against the
    known collapse of DARTS into parameter-free cells.
    """
    w = weights.detach().float().cpu().clone()
    if edge_weights is not None:
        w = w * edge_weights.detach().float().cpu().view(-1, 1)
    none_i = PRIMITIVES.index("none")
    skip_i = PRIMITIVES.index("skip_connect")
    edges: list[list] = []  # [op_index, input, edge_row]
    start, n = 0, 2
    for _ in range(steps):
        rows = w[start:start + n]
        masked = rows.clone()
        masked[:, none_i] = -1.0
        strength = masked.max(dim=1).values
        best = sorted(range(n), key=lambda j: -float(strength[j]))[:2]
        for j in sorted(best):
            edges.append([int(masked[j].argmax()), j, start + j])
        start += n
        n += 1
    if max_skip is not None:
        skips = [e for e in edges if e[0] == skip_i]
        # weakest skip edges first
        skips.sort(key=lambda e: float(w[e[2], skip_i]))
        for e in skips[: max(0, len(skips) - max_skip)]:
            row = w[e[2]].clone()
            row[none_i] = -1.0
            row[skip_i] = -1.0
            e[0] = int(row.argmax())
    return tuple((PRIMITIVES[op], j) for op, j, _ in edges)


def derive_genotype(
    alphas_normal: torch.Tensor,
    alphas_reduce: torch.Tensor,
    steps: int = 4,
    multiplier: int = 4,
    betas_normal: torch.Tensor | None = None,
    betas_reduce: torch.Tensor | None = None,
    max_skip: int | None = 2,
) -> Genotype:
    """Genotype from raw alphas (softmax over ops) and optional raw betas (edge weights)."""

    def edge_w(betas):
        if betas is None:
            return None
        return edge_softmax(betas, steps)

    normal = derive_cell(torch.softmax(alphas_normal, -1), steps, edge_w(betas_normal), max_skip)
    # reduction cells keep every op: skips there are factorised reductions that carry parameters
    reduce = derive_cell(torch.softmax(alphas_reduce, -1), steps, edge_w(betas_reduce), None)
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return Genotype(normal, concat, reduce, concat)


def edge_softmax(betas: torch.Tensor, steps: int) -> torch.Tensor:
    """PC-DARTS edge normalisation: softmax over the incoming edges of each node."""
    out, start, n = [], 0, 2
    for _ in range(steps):
        out.append(torch.softmax(betas[start:start + n], dim=-1))
        start += n
        n += 1
    return torch.cat(out)
