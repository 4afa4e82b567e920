"""The summary's findings: one sentence (or a few) per question the sweep answers.

Each finding reads the complete runs and says what it found, or why it cannot tell; the
thresholds come from ``report.thresholds`` in conf/report.yaml.
"""

from __future__ import annotations

from collections.abc import Sequence

from src.report import derive as d
from src.report.flags import MARK, describe, flagged
from src.report.fmt import DAGGER, fmt_fraction, fmt_nodes, fmt_num, fmt_range, fmt_si_range
from src.report.model_scaling import finding2
from src.report.quality import beat_baselines, bigger_models, global_batch


def _where(r: dict) -> str:
    """'small at 4† nodes (fraction 1/4, 32-true)' for sentences."""
    return (f"{r.get('model')} at {fmt_nodes(r)} node{'s' if d.num(r, 'num_nodes') != 1 else ''}"
            f" (fraction {fmt_fraction(r.get('fraction'))}, {r.get('precision')})")


def best_utilisation(done: list[dict]) -> list[str]:
    with_pct = [r for r in done if d.pct_of_peak(r) is not None]
    if not with_pct:
        return ["No run recorded its peak FLOP/s, so % of peak is unknown."]
    best = max(with_pct, key=d.pct_of_peak)
    per_device = d.tflops_per_device(best) * 1e12
    return [f"The best utilisation is {fmt_num(d.pct_of_peak(best))} % of peak "
            f"({fmt_si_range(per_device, per_device, 'FLOP/s')}"
            f" per device), reached by {_where(best)}."]


def data_loading(done: list[dict], limit: float) -> list[str]:
    def wait(r: dict) -> float | None:
        return d.num(r, "data_wait_frac")

    waits = [r for r in done if wait(r) is not None]
    if not waits:
        return ["No run recorded data_wait_frac, so the data-loading share is unknown."]
    over = sorted((r for r in waits if wait(r) > limit), key=lambda r: -wait(r))
    if over:
        listed = "; ".join(f"{_where(r)}: {fmt_num(100 * wait(r))} %" for r in over)
        return [f"Data loading passes {fmt_num(100 * limit)} % of the step time in "
                f"{len(over)} of {len(waits)} runs: {listed}."]
    top = max(waits, key=wait)
    return [f"Data loading stays under {fmt_num(100 * limit)} % of the step time in every "
            f"run (highest {fmt_num(100 * wait(top))} %, {_where(top)})."]


def plausibility(every: list[dict], include_flagged: bool) -> list[str]:
    """The runs whose numbers the report does not believe, each with what was seen and its
    likely cause (src.report.flags)."""
    bad = [r for r in every if flagged(r)]
    if not bad:
        return []
    where = ("still counted in Table 8's ranges (report.include_flagged)" if include_flagged
             else "left out of Table 8's ranges and of the findings below "
                  "(report.include_flagged=true keeps them)")
    return [f"{MARK} {len(bad)} of {len(every)} run{'s' if len(every) != 1 else ''} "
            f"{'are' if len(bad) != 1 else 'is'} flagged and {where}: "
            + "; ".join(f"{describe(r)} [{_where(r)}]" for r in bad) + "."]


def strong_scaling(groups: dict, floor: float, include_flagged: bool = True) -> list[str]:
    if not groups["strong"]:
        if groups.get("unmeasured", {}).get("strong"):
            return ["Runs at several node counts recorded no throughput, so there is no "
                    "strong-scaling result."]
        return ["No configuration ran at more than one node count, so there is no "
                "strong-scaling result."]
    drops, lowest = [], None
    for g in groups["strong"]:
        for r in g["runs"]:
            if r["ideal_speedup"] <= 1 or (flagged(r) and not include_flagged):
                continue
            if lowest is None or r["scaling_efficiency"] < lowest["scaling_efficiency"]:
                lowest = r
            if r["scaling_efficiency"] < floor:
                drops.append(r)
                break  # the first node count where it drops is the finding
    if drops:
        listed = "; ".join(
            f"{_where(r)}: {fmt_num(100 * r['scaling_efficiency'])} % "
            f"(speed-up {fmt_num(r['speedup'])}\u00d7 of an ideal {fmt_num(r['ideal_speedup'])}\u00d7)"
            for r in drops)
        return [f"Strong-scaling efficiency drops below {fmt_num(100 * floor)} % for {listed}."]
    if lowest is None:
        return []
    return [f"Strong-scaling efficiency stays at or above {fmt_num(100 * floor)} % everywhere "
            f"(lowest {fmt_num(100 * lowest['scaling_efficiency'])} %, {_where(lowest)})."]


def precision(rows: list[dict], done: list[dict], precision_key: Sequence[str]) -> list[str]:
    pairs = d.precision_pairs(rows, precision_key)
    if not pairs:
        if len({str(r.get("precision")) for r in done}) > 1:
            return ["The sweep ran several precisions but no two runs match otherwise, "
                    "so precisions are not compared."]
        return ["The sweep ran one precision only, so precisions are not compared."]
    out = []
    for (a, b), items in sorted(pairs.items()):
        ratios = [x[0] for x in items]
        gm = d.geometric_mean(ratios)
        faster, slower, factor = (b, a, gm) if gm >= 1 else (a, b, 1 / gm)
        spread = d.span(r if gm >= 1 else 1 / r for r in ratios)
        extra = (f", range {fmt_range(*spread)}\u00d7" if len(ratios) > 1 else "")
        out.append(
            f"{faster} is {fmt_num(factor)}\u00d7 faster than {slower} per epoch "
            f"(geometric mean over {len(ratios)} matched configuration"
            f"{'s' if len(ratios) != 1 else ''}{extra}).")
    return out


def emulated_nodes(done: list[dict]) -> list[str]:
    if not any(d.is_emulated(r) for r in done):
        return []
    return [f"Nodes marked {DAGGER} were emulated as process groups on one machine: they "
            "share its cores and memory, so their scaling says little about a real cluster."]


def findings(rows: list[dict], groups: dict, thresholds: dict,
             precision_key: Sequence[str], include_flagged: bool = False,
             paper: dict | None = None) -> list[str]:
    """The findings in the order summary.md lists them; those that read measurements leave
    flagged runs out unless `include_flagged`."""
    every = d.complete(rows)
    if not every:
        return ["No job completed, so there is nothing to measure yet."]
    done = every if include_flagged else [r for r in every if not flagged(r)]
    learning = [*beat_baselines(every, _where), *bigger_models(every), *global_batch(every),
                *finding2(every, paper)]
    if not done:
        return [*plausibility(every, include_flagged), *learning,
                "Every run is flagged, so no throughput measurement is believed."]
    return [
        *plausibility(every, include_flagged),
        *learning,
        *best_utilisation(done),
        *data_loading(done, float(thresholds["data_wait_frac"])),
        *strong_scaling(groups, float(thresholds["scaling_efficiency"]), include_flagged),
        *precision(done, done, precision_key),
        *emulated_nodes(done),
    ]
