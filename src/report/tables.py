"""The summary's tables after Table 8: SAIH Tables 3 and 6, strong and weak scaling, the jobs.

Each returns ``(header, body)`` for ``fmt.md_table``, or None when the sweep has no data for it
(the page then leaves the section out).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from src.contract import STATUS_COMPLETE, STATUS_MISSING
from src.report import derive as d
from src.report.flags import MARK, flag_names, flagged, mark
from src.report.fmt import (
    fmt_bytes,
    fmt_fraction,
    fmt_nodes,
    fmt_num,
    fmt_pct,
    fmt_range,
    fmt_si_range,
    shorten,
    si_scale,
)
from src.report.repeats import bounds, value_of

Table = tuple[list[str], list[list[str]]]


def table3(rows: list[dict]) -> Table | None:
    """Per-model cost: params, weights, FLOPs per sample, arithmetic intensity."""
    done = d.complete(rows)
    header = ["Model", "Params", "Weights", "Forward FLOPs/sample", "Training FLOPs/sample",
              "Measured FLOPs/sample", "Activations", "Arithmetic intensity (FLOP/byte)"]
    body = []
    for model in d.models(done):
        runs = [r for r in done if str(r.get("model")) == model]

        def span(key: str, unit: str = "", runs=runs) -> str:
            s = d.span(d.num(r, key) for r in runs)
            if not s:
                return "n/a"
            return fmt_si_range(*s, unit) if unit else fmt_range(*s)

        params = d.span(d.num(r, "num_params") for r in runs)
        weights = d.span(d.num(r, "mem_weights_bytes") for r in runs)
        acts = d.span(d.num(r, "mem_activations_bytes") for r in runs)
        cells = [model, fmt_si_range(*params, "") if params else "n/a",
                 fmt_bytes(weights[1]) if weights else "n/a",
                 span("flops_per_sample_forward", "FLOP"), span("flops_per_sample_train", "FLOP"),
                 span("flops_per_sample_measured", "FLOP"),
                 fmt_bytes(acts[1]) if acts else "n/a", span("arithmetic_intensity")]
        if any(c != "n/a" for c in cells[1:]):
            body.append(cells)
    return (header, body) if body else None


def table6(rows: list[dict], match_key: Sequence[str]) -> Table | None:
    """Time per epoch per model and precision, one line per matched configuration."""
    done = [r for r in d.complete(rows) if r.get("time_per_epoch_s")]
    if not done:
        return None
    precisions = sorted({str(r.get("precision")) for r in done})
    lines: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    first: dict[tuple, dict] = {}
    marked: set[tuple] = set()  # (key, precision) with a flagged run
    for r in done:
        key = d.group_key(r, match_key)
        lines[key][str(r.get("precision"))].append(r["time_per_epoch_s"])
        first.setdefault(key, r)
        if flagged(r):
            marked.add((key, str(r.get("precision"))))
    # Speed-ups are against full precision when the sweep has it.
    ref = "32-true" if "32-true" in precisions else precisions[0]
    others = [p for p in precisions if p != ref]
    header = ["Model", "Nodes", "Ranks", "Fraction"] + [f"{p} (s/epoch)" for p in precisions]
    header += [f"Speed-up {p} vs {ref}" for p in others]

    def order(key: tuple) -> tuple:
        r = first[key]
        return (str(r.get("model")), d.num(r, "fraction") or 0, d.world_size(r) or 0, str(key))

    body = []
    for key in sorted(lines, key=order):
        r = first[key]
        times = {p: sum(v) / len(v) for p, v in lines[key].items()}
        cells = [str(r.get("model")), fmt_nodes(r), str(d.world_size(r)),
                 fmt_fraction(r.get("fraction"))]
        cells += [fmt_num(times.get(p)) + (f" {MARK}" if (key, p) in marked else "")
                  for p in precisions]
        for p in others:
            a, b = times.get(ref), times.get(p)
            cells.append(f"{fmt_num(a / b)}\u00d7" if a and b else "n/a")
        body.append(cells)
    return header, body


def _group_label(key: dict, skip: Sequence[str] = ()) -> str:
    parts = []
    for field, value in key.items():
        if field in skip or value is None:
            continue
        parts.append(fmt_fraction(value) if field in ("fraction",) else str(value))
    return " \u00b7 ".join(parts)


def scaling_table(groups: dict) -> Table | None:
    if not groups["strong"]:
        return None
    runs = [r for g in groups["strong"] for r in g["runs"]]
    factor, prefix = si_scale(max(d.tflops_aggregate(r) for r in runs) * 1e12)
    header = ["Configuration", "Nodes", "Ranks", f"Aggregate {prefix}FLOP/s", "Speed-up", "Ideal",
              "Efficiency", "Flags"]
    body = []
    for g in groups["strong"]:
        label = _group_label(g["key"], skip=("batch_size", "input_size", "channels", "accelerator"))
        for r in g["runs"]:
            body.append([label, fmt_nodes(r), str(d.world_size(r)),
                         _with_spread(r, "tflops_aggregate", factor),
                         mark(r, f"{fmt_num(r['speedup'])}\u00d7"),
                         f"{fmt_num(r['ideal_speedup'])}\u00d7",
                         mark(r, fmt_pct(100 * r["scaling_efficiency"])), flag_names(r)])
    return header, body


def weak_table(groups: dict) -> Table | None:
    if not groups["weak"]:
        return None
    runs = [r for g in groups["weak"] for r in g["runs"]]
    factor, prefix = si_scale(max(d.tflops_per_device(r) for r in runs) * 1e12)
    header = ["Configuration", "Train samples/rank", "Nodes", "Ranks", "Fraction",
              f"{prefix}FLOP/s per device", "Weak-scaling efficiency", "Flags"]
    body = []
    for g in groups["weak"]:
        label = _group_label(g["key"], skip=("batch_size", "input_size", "channels",
                                             "accelerator", "samples_per_rank"))
        for r in g["runs"]:
            body.append([label, fmt_num(g["key"]["samples_per_rank"], 6), fmt_nodes(r),
                         str(d.world_size(r)), fmt_fraction(r.get("fraction")),
                         _with_spread(r, "tflops_per_device", factor),
                         mark(r, fmt_pct(100 * r["weak_scaling_efficiency"])), flag_names(r)])
    return header, body


def _with_spread(row: dict, key: str, factor: float) -> str:
    """'3.1 (2.9-3.4)': the value and its min-max over repeats or windows (`bounds`)."""
    text = fmt_num(value_of(row, key) * 1e12 / factor)
    span = bounds(row, key)
    if span and span[1] > span[0]:
        text += f" ({fmt_range(span[0] * 1e12 / factor, span[1] * 1e12 / factor)})"
    return text


def jobs_table(jobs: list[dict], rows: list[dict] | None = None) -> Table:
    """Every job; `rows` (repeats folded, flags set) give each job its configuration's flags."""
    by_label = {label: r for r in (rows or jobs)
                for label in str(r.get("run_id", r.get("job"))).split("+")}
    header = ["Job", "Status", "Model", "Nodes", "Ranks", "Fraction", "Precision",
              "Aggregate TFLOP/s", "% of peak", "Data wait", "val/loss", "Flags", "Error"]
    body = []
    for r in jobs:
        ok = r.get("status") == STATUS_COMPLETE  # a failed run's numbers are not results
        wait, agg, pct, val = (d.num(r, "data_wait_frac"), d.tflops_aggregate(r),
                               d.pct_of_peak(r), d.num(r, "val/loss"))
        problem = shorten(r.get("error")) or (
            "no metrics.json (in flight or killed)" if r.get("status") == STATUS_MISSING else "")
        if not ok and r.get("overrides"):
            problem += f"; overrides: {r['overrides']}"
        folded = by_label.get(str(r.get("run_id", r.get("job"))), r)
        body.append([
            str(r.get("run_id", r.get("job"))), str(r.get("status")), str(r.get("model") or ""),
            fmt_nodes(r) if r.get("num_nodes") is not None else "",
            str(d.world_size(r) or ""),
            fmt_fraction(r.get("fraction")) if r.get("fraction") is not None else "",
            str(r.get("precision") or ""),
            mark(folded, fmt_num(agg, 4)) if ok and agg is not None else "",
            mark(folded, fmt_num(pct)) if ok and pct is not None else "",
            fmt_pct(100 * wait) if ok and wait is not None else "",
            fmt_num(val, 4) if ok and val is not None else "",
            flag_names(folded) if ok else "",
            problem,
        ])
    return header, body
