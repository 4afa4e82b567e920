"""How the models compare with each other, beside the paper's figures: SAIH Finding 2.

The paper (its Table 3 and the text around it) measured, per model, the arithmetic intensity
and how much more memory (weights + intermediate results) and computation the medium and
large models need than the small one; its Finding 2 reads from them that the memory/compute
ratio changes widely between 3D CNNs and that more layers and weights do not always mean a
higher intensity (its large model is below its medium one). The paper's numbers live in
`report.paper` (conf/report.yaml); ours are medians over each model's complete runs.
"""

from __future__ import annotations

from src.report import derive as d
from src.report.fmt import fmt_num
from src.util.stats import median


def _per_model(done: list[dict], value) -> dict[str, float]:
    out = {}
    for model in d.models(done):
        vals = [v for v in (value(r) for r in done if str(r.get("model")) == model)
                if v is not None]
        if vals:
            out[model] = median(vals)
    return out


def _memory(row: dict) -> float | None:
    weights, acts = d.num(row, "mem_weights_bytes"), d.num(row, "mem_activations_bytes")
    return weights + acts if weights is not None and acts is not None else None


def _ratios(values: dict[str, float], base: str) -> dict[str, float]:
    return {m: v / values[base] for m, v in values.items() if m != base and values.get(base)}


def _listed(ours: dict, paper: dict, unit: str = "") -> str:
    return ", ".join(f"{m} {fmt_num(v, 4)}{unit} (paper {fmt_num(paper[m], 4)}{unit})"
                     if m in paper else f"{m} {fmt_num(v, 4)}{unit}" for m, v in ours.items())


def _intensity(done: list[dict], paper: dict) -> str | None:
    ai = _per_model(done, lambda r: d.num(r, "arithmetic_intensity"))
    ref = paper.get("arithmetic_intensity") or {}
    if len(ai) < 2:
        return None
    text = f"Arithmetic intensity: {_listed(ai, ref)} FLOP/byte"
    if {"medium", "large"} <= set(ai) and {"medium", "large"} <= set(ref):
        ours_below = ai["large"] < ai["medium"]
        paper_below = ref["large"] < ref["medium"]
        verdict = "as in the paper" if ours_below == paper_below else "unlike the paper"
        text += (f"; the large model's intensity is {'below' if ours_below else 'above'} the "
                 f"medium's, {verdict}")
    return text + "."


def _demand(done: list[dict], paper: dict) -> str | None:
    base = "small"
    memory = _ratios(_per_model(done, _memory), base)
    compute = _ratios(_per_model(done, lambda r: d.num(r, "flops_per_sample_train")), base)
    if not memory and not compute:
        return None
    parts = []
    if memory:
        batches = sorted({str(r.get("batch_size")) for r in done})
        parts.append(f"weights + activations {_listed(memory, paper.get('memory_vs_small') or {}, '×')}"
                     f" the small model's (per-device batch {'/'.join(batches)})")
    if compute:
        parts.append(f"training FLOPs per sample {_listed(compute, paper.get('compute_vs_small') or {}, '×')}")
    text = "Against the small model: " + "; ".join(parts)
    common = [m for m in memory if m in compute]
    if common:
        gap = all(memory[m] < compute[m] for m in common)
        text += (f". Memory grows {'less than' if gap else 'at least as fast as'} computation "
                 f"for {', '.join(common)}, {'as' if gap else 'unlike'} the paper's models")
    return text + "."


def finding2(done: list[dict], paper: dict | None) -> list[str]:
    """SAIH Finding 2 from the sweep's models, with the paper's numbers beside ours."""
    paper = paper or {}
    parts = [p for p in (_intensity(done, paper), _demand(done, paper)) if p]
    if not parts:
        return []
    return ["Finding 2 (memory, computation and intensity across models): " + " ".join(parts)]
