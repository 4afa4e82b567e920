"""Genotypes: the discrete cell a search found, checked at construction, and its YAML file.

A cell has 2 input nodes (0, 1: outputs of the two previous cells), `steps` intermediate nodes
(2 .. steps+1) and a concat output. A genotype lists, for each intermediate node, its two
incoming edges as (op, input node) pairs, so `normal` has 2 * steps entries. Alphas and their
derivation into a genotype belong to the search (`src/nas/derive.py`).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from src.errors import GenotypeError, GenotypeFileNotFound
from src.layers.ops import PRIMITIVES
from src.util.atomic import write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]
CELLS = ("normal", "reduce")


def _node(value) -> int | None:
    """A node index (any integer type, not a bool), or None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _edges(cell: str, edges) -> tuple[tuple[str, int], ...]:
    """A cell's edges as (op, input node) pairs, each op known and each input an earlier node."""
    try:
        pairs = tuple((op, j) for op, j in edges)
    except (TypeError, ValueError) as err:  # not a list, or an entry that is not a pair
        raise GenotypeError(f"genotype.{cell}: expected a list of [op, input node] pairs, "
                            f"got {edges!r}") from err
    if not pairs or len(pairs) % 2:
        raise GenotypeError(f"genotype.{cell} has {len(pairs)} edges: a cell needs at least "
                            "one intermediate node, with two edges each")
    out = []
    for k, (op, j) in enumerate(pairs):
        if op not in PRIMITIVES or op == "none":
            known = [p for p in PRIMITIVES if p != "none"]
            raise GenotypeError(f"genotype.{cell} edge {k}: invalid operation {op!r}; "
                                f"known: {known}")
        node = _node(j)
        if node is None or not 0 <= node < 2 + k // 2:
            raise GenotypeError(f"genotype.{cell} edge {k} reads node {j!r}, which does not "
                                f"exist yet (nodes 0..{1 + k // 2} do)")
        out.append((str(op), node))
    return tuple(out)


def _concat(cell: str, concat, steps: int) -> tuple[int, ...]:
    try:
        nodes = tuple(concat)
    except TypeError as err:
        raise GenotypeError(f"genotype.{cell}_concat={concat!r} is not a list of nodes") from err
    if not nodes:
        raise GenotypeError(f"genotype.{cell}_concat is empty: the cell would have no output")
    bad = [n for n in nodes if _node(n) is None or not 0 <= _node(n) < 2 + steps]
    if bad:
        raise GenotypeError(f"genotype.{cell}_concat names nodes {bad}, but the cell has only "
                            f"nodes 0..{1 + steps} ({steps} intermediate)")
    return tuple(_node(n) for n in nodes)


@dataclasses.dataclass(frozen=True)
class Genotype:
    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self):
        # lists (from YAML) become tuples, so genotypes compare and hash by value
        for cell in CELLS:
            edges = _edges(cell, getattr(self, cell))
            object.__setattr__(self, cell, edges)
            concat = _concat(cell, getattr(self, f"{cell}_concat"), len(edges) // 2)
            object.__setattr__(self, f"{cell}_concat", concat)

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
    def from_dict(cls, d: Mapping[str, Any]) -> Genotype:
        if not isinstance(d, Mapping):
            raise GenotypeError(f"a genotype is a mapping of {cls._fields()}, got {d!r}")
        missing = [k for k in cls._fields() if k not in d]
        if missing:
            raise GenotypeError(f"genotype lacks {missing}")
        return cls(d["normal"], d["normal_concat"], d["reduce"], d["reduce_concat"])

    @staticmethod
    def _fields() -> list[str]:
        return [f.name for f in dataclasses.fields(Genotype)]

    def count(self, op: str, cell: str = "normal") -> int:
        return sum(1 for o, _ in getattr(self, cell) if o == op)


def reference_genotype(op: str, steps: int = 4) -> Genotype:
    """A cell with `op` on every edge, each node reading the two cell inputs: the stand-in
    the model filter sizes before the search has found a genotype."""
    cell = [(op, j) for _ in range(steps) for j in (0, 1)]
    concat = list(range(2, steps + 2))
    return Genotype(cell, concat, cell, concat)


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
    return write_text_atomic(path, yaml.safe_dump(_plain(doc), sort_keys=False,
                                                  default_flow_style=None))


def load_genotype_file(path: str | Path) -> dict[str, Any]:
    """The whole genotype document: {"genotype": Genotype, "network": {...}, "provenance": {...},
    "path": str}; GenotypeError naming the file for anything that is not one."""
    p = resolve_path(path)
    if not p.is_file():
        raise GenotypeFileNotFound(f"genotype file not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        detail = " ".join(str(err).split())  # YAML's message spans lines; ours is one
        raise GenotypeError(f"{p}: not a readable YAML genotype file ({detail})") from err
    if not isinstance(doc, Mapping) or "genotype" not in doc:
        raise GenotypeError(f"{p} has no 'genotype' section")
    for section in ("network", "provenance"):
        if not isinstance(doc.get(section) or {}, Mapping):
            raise GenotypeError(f"{p}: the '{section}' section is not a mapping")
    try:
        genotype = Genotype.from_dict(doc["genotype"])
    except GenotypeError as err:
        raise GenotypeError(f"{p}: {err}") from None
    return {"genotype": genotype, "network": dict(doc.get("network") or {}),
            "provenance": dict(doc.get("provenance") or {}), "path": str(p)}


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
