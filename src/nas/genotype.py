"""Genotypes: the discrete cell found by the search, its derivation from alphas, YAML I/O.

A cell has 2 input nodes (0, 1: outputs of the two previous cells), `steps` intermediate nodes
(2 .. steps+1) and a concat output. A genotype lists, for each intermediate node, its two
incoming edges as (op, input node) pairs, so `normal` has 2 * steps entries.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import yaml

from src.nas.ops import PRIMITIVES

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Genotype:
    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self):
        # normalise lists (from YAML) to tuples so genotypes compare and hash by value
        object.__setattr__(self, "normal", tuple((str(o), int(i)) for o, i in self.normal))
        object.__setattr__(self, "reduce", tuple((str(o), int(i)) for o, i in self.reduce))
        object.__setattr__(self, "normal_concat", tuple(int(i) for i in self.normal_concat))
        object.__setattr__(self, "reduce_concat", tuple(int(i) for i in self.reduce_concat))
        for cell in (self.normal, self.reduce):
            if len(cell) % 2:
                raise ValueError("a genotype cell needs two edges per intermediate node")
            for k, (op, j) in enumerate(cell):
                if op not in PRIMITIVES or op == "none":
                    raise ValueError(f"invalid operation {op!r} in genotype")
                if not 0 <= j < 2 + k // 2:
                    raise ValueError(f"edge {k} reads node {j} that does not exist yet")

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "normal": [[op, j] for op, j in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, j] for op, j in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Genotype:
        return cls(d["normal"], d["normal_concat"], d["reduce"], d["reduce_concat"])

    def count(self, op: str, cell: str = "normal") -> int:
        return sum(1 for o, _ in getattr(self, cell) if o == op)


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


def reference_genotype(op: str, steps: int = 4) -> Genotype:
    """A cell with `op` on every edge, each node reading the two cell inputs: the stand-in
    the model filter sizes before the search has found a genotype."""
    cell = [(op, j) for _ in range(steps) for j in (0, 1)]
    concat = list(range(2, steps + 2))
    return Genotype(cell, concat, cell, concat)


def edge_softmax(betas: torch.Tensor, steps: int) -> torch.Tensor:
    """PC-DARTS edge normalisation: softmax over the incoming edges of each node."""
    out, start, n = [], 0, 2
    for _ in range(steps):
        out.append(torch.softmax(betas[start:start + n], dim=-1))
        start += n
        n += 1
    return torch.cat(out)


def resolve_path(path: str | Path) -> Path:
    """Absolute path, or one relative to the repository root (never to the current dir)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def save_genotype(path: str | Path, genotype: Genotype, network: dict | None = None,
                  provenance: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"genotype": genotype.to_dict()}
    if network is not None:
        doc["network"] = network
    if provenance is not None:
        doc["provenance"] = provenance
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(_plain(doc), sort_keys=False, default_flow_style=None))
    tmp.replace(path)
    return path


def load_genotype_file(path: str | Path) -> dict[str, Any]:
    """The whole genotype document: {"genotype": Genotype, "network": {...}, "provenance": {...}}."""
    p = resolve_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"genotype file not found: {p}")
    doc = yaml.safe_load(p.read_text()) or {}
    if "genotype" not in doc:
        raise ValueError(f"{p} has no 'genotype' section")
    doc["genotype"] = Genotype.from_dict(doc["genotype"])
    doc.setdefault("network", {})
    doc.setdefault("provenance", {})
    doc["path"] = str(p)
    return doc


def load_genotype(path: str | Path) -> Genotype:
    return load_genotype_file(path)["genotype"]


def _plain(obj):
    """YAML-safe copy: tuples to lists, numpy/torch scalars to Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, str):
        return str(obj)  # str subclasses (torch.__version__) are not YAML-safe
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj
