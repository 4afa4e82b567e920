"""Tables (SAIH Table 8, 3, 6, scaling) and findings, rendered as Markdown.

Everything here reads the rows made by ``collect`` after ``derive.derive`` has added the
derived columns; numbers come back as plain floats (``ranges``) so tests can check them
exactly, and as text (``table8``, ``findings``, ``render``) for summary.md.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from src.report import derive as d
from src.report.collect import STATUS_COMPLETE, STATUS_FAILED, STATUS_MISSING

DAGGER = "\u2020"
EN_DASH = "\u2013"


# ---------------------------------------------------------------- number formatting
def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    text = f"{x:.{digits}g}"
    if "e" in text:  # '1e9', not Python's '1e+09'
        mantissa, exp = text.split("e")
        text = f"{mantissa}e{int(exp)}"
    return text


def fmt_range(lo: float | None, hi: float | None, digits: int = 3) -> str:
    if lo is None or hi is None:
        return "n/a"
    a, b = fmt_num(lo, digits), fmt_num(hi, digits)
    return a if a == b else f"{a}{EN_DASH}{b}"


_PREFIXES = [(1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")]


def si_scale(value: float) -> tuple[float, str]:
    """The SI factor and prefix that puts ``value`` in [1, 1000)."""
    for factor, prefix in _PREFIXES:
        if abs(value) >= factor:
            return factor, prefix
    return 1.0, ""


def fmt_si_range(lo: float | None, hi: float | None, unit: str) -> str:
    """A range in one SI unit chosen by its upper end, e.g. '12.5-340 GFLOP/s'."""
    if lo is None or hi is None:
        return "n/a"
    factor, prefix = si_scale(hi)
    return f"{fmt_range(lo / factor, hi / factor)} {prefix}{unit}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for factor, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{fmt_num(n / factor)} {unit}"
    return f"{int(n)} B"


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{fmt_num(x)} %"


def md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


# ---------------------------------------------------------------- numbers behind Table 8
def _span(values: Iterable[float | None]) -> tuple[float, float] | None:
    vals = [v for v in values if v is not None]
    return (min(vals), max(vals)) if vals else None


def ranges(rows: list[dict]) -> dict[str, tuple[float, float] | None]:
    """Min and max of each Table 8 quantity over the complete runs (None: no data)."""
    done = d.complete(rows)
    single = [r for r in done if d.world_size(r) == 1]
    scaled = [r for r in done if r.get("ideal_speedup") is not None and r["ideal_speedup"] > 1]
    weak = [r for r in done if r.get("weak_world_ratio") is not None and r["weak_world_ratio"] > 1]
    return {
        "dataset_gb": _span(d.num(r, "dataset_bytes") and d.num(r, "dataset_bytes") / 1e9
                            for r in done),
        "n_train_samples": _span(d.num(r, "n_train_samples") for r in done),
        "n_val_samples": _span(d.num(r, "n_val_samples") for r in done),
        "flops_per_sample_forward": _span(d.num(r, "flops_per_sample_forward") for r in done),
        "flops_per_sample_train": _span(d.num(r, "flops_per_sample_train") for r in done),
        "tflops_aggregate": _span(d.tflops_aggregate(r) for r in done),
        "pct_of_peak": _span(d.pct_of_peak(r) for r in done),
        "tflops_single_device": _span(d.tflops_per_device(r) for r in single),
        "pct_of_peak_single_device": _span(d.pct_of_peak(r) for r in single),
        "tflops_per_device": _span(d.tflops_per_device(r) for r in done),
        "speedup": _span(r["speedup"] for r in scaled),
        "scaling_efficiency": _span(r["scaling_efficiency"] for r in scaled),
        "speedup_nodes": _span(d.num(r, "num_nodes") for r in scaled),
        "weak_scaling_efficiency": _span(r["weak_scaling_efficiency"] for r in weak),
        "weak_nodes": _span(d.num(r, "num_nodes") for r in weak),
        "arithmetic_intensity": _span(d.num(r, "arithmetic_intensity") for r in done),
        "train_loss": _span(d.num(r, "train/loss") for r in done),
        "val_loss": _span(d.num(r, "val/loss") for r in done),
        "data_wait_frac": _span(d.num(r, "data_wait_frac") for r in done),
        "num_nodes": _span(d.num(r, "num_nodes") for r in done),
        "world_size": _span(d.world_size(r) for r in done),
    }


# ---------------------------------------------------------------- Table 8 text
def _unique(rows: Iterable[dict], key: str) -> list:
    seen: list = []
    for r in rows:
        v = r.get(key)
        if v is not None and v != "" and v not in seen:
            seen.append(v)
    return seen


def _models(rows: list[dict]) -> list[str]:
    return [str(m) for m in _unique(rows, "model")]


def _emulated_note(rows: list[dict]) -> str:
    flags = {d.is_emulated(r) for r in rows}
    if flags == {True}:
        return f" {DAGGER}emulated on one machine"
    if True in flags:
        return f" ({DAGGER}: emulated on one machine)"
    return ""


def describe_system(rows: list[dict]) -> str:
    """'CPU model or GPU name, counts, memory', from what the jobs recorded."""
    with_sys = [r for r in rows if r.get("hostname") or r.get("cpu_model") or r.get("gpu_name")]
    if not with_sys:
        return "n/a (no job recorded its system)"
    parts = []
    machines: dict[tuple, set] = defaultdict(set)
    for r in with_sys:
        machines[(r.get("gpu_name"), r.get("gpu_mem_bytes"), r.get("n_gpus"), r.get("cpu_model"),
                  r.get("n_cpus"), r.get("mem_bytes"))].add(r.get("hostname"))
    for (gpu, gpu_mem, n_gpus, cpu, n_cpus, mem), hosts in machines.items():
        devices = _unique([r for r in with_sys if r.get("gpu_name") == gpu], "devices")
        per_node = "/".join(str(x) for x in sorted(devices)) or "?"
        host_text = f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}"
        cpu_text = f"{cpu or 'unknown CPU'}, {n_cpus or '?'} CPUs, {fmt_bytes(d.num({'m': mem}, 'm'))} RAM"
        if gpu:
            memory = f" ({fmt_bytes(d.num({'m': gpu_mem}, 'm'))})" if gpu_mem else ""
            seen = f" ({n_gpus} visible)" if n_gpus and str(n_gpus) != per_node else ""
            parts.append(f"{per_node} \u00d7 {gpu}{memory} per node{seen}; host {cpu_text}; "
                         f"{host_text}")
        else:
            ranks = "rank" if per_node == "1" else "ranks"
            parts.append(f"CPU only: {cpu_text}; {per_node} {ranks} per node; {host_text}")
    done = d.complete(rows) or rows
    nodes, ws = _span(d.num(r, "num_nodes") for r in done), _span(d.world_size(r) for r in done)
    if nodes:
        dag = DAGGER if any(d.is_emulated(r) for r in done) else ""
        parts.append(f"{fmt_range(*nodes)} nodes{dag} ({fmt_range(*ws)} ranks)"
                     + _emulated_note(done))
    return "; ".join(parts)


def _framework(rows: list[dict]) -> str:
    torch_v = ", ".join(str(v) for v in _unique(rows, "torch")) or "?"
    light_v = ", ".join(str(v) for v in _unique(rows, "lightning")) or "?"
    precisions = ", ".join(str(v) for v in _unique(rows, "precision"))
    text = f"PyTorch {torch_v} + Lightning {light_v}"
    return text + (f"; precision {precisions}" if precisions else "")


def _data_format(rows: list[dict], base: str) -> str:
    shapes = []
    for r in rows:
        c, s = r.get("channels"), r.get("input_size")
        if s is not None:
            shape = f"{c if c is not None else '?'}\u00d7{s}\u00b3"
            if shape not in shapes:
                shapes.append(shape)
    return base + (f"; samples {', '.join(shapes)} float32" if shapes else "")


NO_THROUGHPUT = "n/a (no throughput metrics: did the throughput callback run?)"


def table8(rows: list[dict], app: dict, groups: dict | None = None) -> list[tuple[str, str]]:
    """(item, value) pairs of the SAIH Table 8 summary."""
    done = d.complete(rows)
    unmeasured = (groups or {}).get("unmeasured", {})
    rg = ranges(rows)
    emulated = any(d.is_emulated(r) for r in done)
    dag = DAGGER if emulated else ""

    def flops_text() -> str:
        fw, tr = rg["flops_per_sample_forward"], rg["flops_per_sample_train"]
        parts = []
        if fw:
            parts.append(f"forward {fmt_si_range(*fw, 'FLOP')}/sample")
        if tr:
            parts.append(f"training {fmt_si_range(*tr, 'FLOP')}/sample")
        return "; ".join(parts) or "n/a"

    def perf_text(flops_key: str, pct_key: str) -> str:
        span = rg[flops_key]
        if not span:
            return NO_THROUGHPUT if done else "n/a"
        text = fmt_si_range(span[0] * 1e12, span[1] * 1e12, "FLOP/s")
        if rg[pct_key]:
            text += f" ({fmt_range(*rg[pct_key])} % of peak)"
        return text

    def dataset_text() -> str:
        parts = []
        if rg["dataset_gb"]:
            parts.append(f"{fmt_range(*rg['dataset_gb'])} GB")
        if rg["n_train_samples"]:
            samples = f"{fmt_range(*rg['n_train_samples'], digits=12)} training samples"
            if rg["n_val_samples"]:
                samples += f" + {fmt_range(*rg['n_val_samples'], digits=12)} validation"
            parts.append(samples)
        return "; ".join(parts) or "n/a"

    def speedup_text() -> str:
        if not rg["speedup"]:
            if unmeasured.get("strong"):
                return NO_THROUGHPUT
            return "n/a (no configuration ran at more than one node count)"
        return (f"{fmt_range(*rg['speedup'])}\u00d7 at {fmt_range(*rg['speedup_nodes'])} "
                f"nodes{dag} (efficiency {fmt_range(*(100 * x for x in rg['scaling_efficiency']))} %)")

    def weak_text() -> str:
        if not rg["weak_scaling_efficiency"]:
            if unmeasured.get("weak"):
                return NO_THROUGHPUT
            return "n/a (no runs where the data grows with the nodes)"
        lo, hi = rg["weak_scaling_efficiency"]
        return f"{fmt_range(100 * lo, 100 * hi)} % at {fmt_range(*rg['weak_nodes'])} nodes{dag}"

    def loss_text() -> str:
        parts = []
        if rg["train_loss"]:
            parts.append(f"train {fmt_range(*rg['train_loss'])}")
        if rg["val_loss"]:
            parts.append(f"validation {fmt_range(*rg['val_loss'])}")
        return "; ".join(parts) or "n/a"

    # Measured peaks vary run to run: one range per precision and source.
    peak_runs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in done:
        if d.num(r, "peak_flops_per_device"):
            peak_runs[(str(r.get("precision")), str(r.get("peak_flops_source") or "?"))].append(
                d.num(r, "peak_flops_per_device"))
    peak_text = "; ".join(f"{prec}: {fmt_si_range(min(v), max(v), 'FLOP/s')} ({src})"
                          for (prec, src), v in sorted(peak_runs.items())) or "n/a"
    ai = rg["arithmetic_intensity"]
    wait = rg["data_wait_frac"]
    models = _models(done) or _models(rows)
    return [
        ("Domain", app.get("domain", "")),
        ("Data augment", app.get("data_augment", "")),
        ("Model augment", app.get("model_augment", "")),
        ("DNN model", app.get("dnn_model", "") + (f"; models: {', '.join(models)}" if models else "")),
        ("Data format", _data_format(done or rows, app.get("data_format", ""))),
        ("Framework", _framework(done or rows)),
        ("Dataset size", dataset_text()),
        ("System", describe_system(rows)),
        ("Peak FLOP/s per device", peak_text),
        ("Model FLOPs", flops_text()),
        (f"Aggregate FLOP/s{dag}", perf_text("tflops_aggregate", "pct_of_peak")),
        ("Single-device FLOP/s", perf_text("tflops_single_device", "pct_of_peak_single_device")
         if any(d.world_size(r) == 1 for r in done) else "n/a (no 1-rank run)"),
        ("Per-device FLOP/s (all runs)", perf_text("tflops_per_device", "pct_of_peak")),
        (f"Strong-scaling speed-up{dag}", speedup_text()),
        (f"Weak-scaling efficiency{dag}", weak_text()),
        ("Arithmetic intensity", f"{fmt_range(*ai)} FLOP/byte" if ai else "n/a"),
        ("Data-loading share", f"{fmt_range(100 * wait[0], 100 * wait[1])} % of step time"
         if wait else "n/a"),
        ("Loss (final)", loss_text()),
    ]


# ---------------------------------------------------------------- Tables 3 and 6
def table3(rows: list[dict]) -> tuple[list[str], list[list[str]]] | None:
    """Per-model cost: params, weights, FLOPs per sample, arithmetic intensity."""
    done = d.complete(rows)
    header = ["Model", "Params", "Weights", "Forward FLOPs/sample", "Training FLOPs/sample",
              "Measured FLOPs/sample", "Activations", "Arithmetic intensity (FLOP/byte)"]
    body = []
    for model in _models(done):
        runs = [r for r in done if str(r.get("model")) == model]

        def span(key: str, unit: str = "", runs=runs) -> str:
            s = _span(d.num(r, key) for r in runs)
            if not s:
                return "n/a"
            return fmt_si_range(*s, unit) if unit else fmt_range(*s)

        params = _span(d.first_num(r, d.PARAM_COUNT_KEYS) for r in runs)
        weights = _span(d.num(r, "mem_weights_bytes") for r in runs)
        acts = _span(d.num(r, "mem_activations_bytes") for r in runs)
        cells = [model, fmt_si_range(*params, "") if params else "n/a",
                 fmt_bytes(weights[1]) if weights else "n/a",
                 span("flops_per_sample_forward", "FLOP"), span("flops_per_sample_train", "FLOP"),
                 span("flops_per_sample_measured", "FLOP"),
                 fmt_bytes(acts[1]) if acts else "n/a", span("arithmetic_intensity")]
        if any(c != "n/a" for c in cells[1:]):
            body.append(cells)
    return (header, body) if body else None


def table6(rows: list[dict], match_key: Sequence[str]) -> tuple[list[str], list[list[str]]] | None:
    """Time per epoch per model and precision, one line per matched configuration."""
    done = [r for r in d.complete(rows) if r.get("time_per_epoch_s")]
    if not done:
        return None
    precisions = sorted({str(r.get("precision")) for r in done})
    lines: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    first: dict[tuple, dict] = {}
    for r in done:
        key = d.group_key(r, match_key)
        lines[key][str(r.get("precision"))].append(r["time_per_epoch_s"])
        first.setdefault(key, r)
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
        cells = [str(r.get("model")), d.fmt_nodes(r), str(d.world_size(r)),
                 d.fmt_fraction(r.get("fraction"))]
        cells += [fmt_num(times.get(p)) for p in precisions]
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
        parts.append(d.fmt_fraction(value) if field in ("fraction",) else str(value))
    return " \u00b7 ".join(parts)


def scaling_table(groups: dict) -> tuple[list[str], list[list[str]]] | None:
    if not groups["strong"]:
        return None
    runs = [r for g in groups["strong"] for r in g["runs"]]
    factor, prefix = si_scale(max(d.tflops_aggregate(r) for r in runs) * 1e12)
    header = ["Configuration", "Nodes", "Ranks", f"Aggregate {prefix}FLOP/s", "Speed-up", "Ideal",
              "Efficiency"]
    body = []
    for g in groups["strong"]:
        label = _group_label(g["key"], skip=("batch_size", "input_size", "channels", "accelerator"))
        for r in g["runs"]:
            body.append([label, d.fmt_nodes(r), str(d.world_size(r)),
                         fmt_num(d.tflops_aggregate(r) * 1e12 / factor),
                         f"{fmt_num(r['speedup'])}\u00d7", f"{fmt_num(r['ideal_speedup'])}\u00d7",
                         fmt_pct(100 * r["scaling_efficiency"])])
    return header, body


def weak_table(groups: dict) -> tuple[list[str], list[list[str]]] | None:
    if not groups["weak"]:
        return None
    runs = [r for g in groups["weak"] for r in g["runs"]]
    factor, prefix = si_scale(max(d.tflops_per_device(r) for r in runs) * 1e12)
    header = ["Configuration", "Train samples/rank", "Nodes", "Ranks", "Fraction",
              f"{prefix}FLOP/s per device", "Weak-scaling efficiency"]
    body = []
    for g in groups["weak"]:
        label = _group_label(g["key"], skip=("batch_size", "input_size", "channels",
                                             "accelerator", "samples_per_rank"))
        for r in g["runs"]:
            body.append([label, fmt_num(g["key"]["samples_per_rank"], 6), d.fmt_nodes(r),
                         str(d.world_size(r)), d.fmt_fraction(r.get("fraction")),
                         fmt_num(d.tflops_per_device(r) * 1e12 / factor),
                         fmt_pct(100 * r["weak_scaling_efficiency"])])
    return header, body


def jobs_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["Job", "Status", "Model", "Nodes", "Ranks", "Fraction", "Precision",
              "Aggregate TFLOP/s", "% of peak", "Data wait", "val/loss", "Error"]
    body = []
    for r in rows:
        ok = r.get("status") == STATUS_COMPLETE  # a failed run's numbers are not results
        wait, agg, pct, val = (d.num(r, "data_wait_frac"), d.tflops_aggregate(r),
                               d.pct_of_peak(r), d.num(r, "val/loss"))
        problem = _short(r.get("error")) or (
            "no metrics.json (in flight or killed)" if r.get("status") == STATUS_MISSING else "")
        if not ok and r.get("overrides"):
            problem += f"; overrides: {r['overrides']}"
        body.append([
            str(r.get("run_id", r.get("job"))), str(r.get("status")), str(r.get("model") or ""),
            d.fmt_nodes(r) if r.get("num_nodes") is not None else "",
            str(d.world_size(r) or ""),
            d.fmt_fraction(r.get("fraction")) if r.get("fraction") is not None else "",
            str(r.get("precision") or ""),
            fmt_num(agg, 4) if ok and agg is not None else "",
            fmt_num(pct) if ok and pct is not None else "",
            fmt_pct(100 * wait) if ok and wait is not None else "",
            fmt_num(val, 4) if ok and val is not None else "",
            problem,
        ])
    return header, body


def _short(text: Any, limit: int = 120) -> str:
    if not text:
        return ""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# ---------------------------------------------------------------- findings
def _where(r: dict) -> str:
    """'small at 4† nodes (fraction 1/4, 32-true)' for sentences."""
    return (f"{r.get('model')} at {d.fmt_nodes(r)} node{'s' if d.num(r, 'num_nodes') != 1 else ''}"
            f" (fraction {d.fmt_fraction(r.get('fraction'))}, {r.get('precision')})")


def findings(rows: list[dict], groups: dict, thresholds: dict,
             precision_key: Sequence[str]) -> list[str]:
    done = d.complete(rows)
    out: list[str] = []
    if not done:
        return ["No job completed, so there is nothing to measure yet."]

    # Best utilisation.
    with_pct = [r for r in done if d.pct_of_peak(r) is not None]
    if with_pct:
        best = max(with_pct, key=d.pct_of_peak)
        out.append(
            f"The best utilisation is {fmt_num(d.pct_of_peak(best))} % of peak "
            f"({fmt_si_range(d.tflops_per_device(best) * 1e12, d.tflops_per_device(best) * 1e12, 'FLOP/s')}"
            f" per device), reached by {_where(best)}.")
    else:
        out.append("No run recorded its peak FLOP/s, so % of peak is unknown.")

    # Data-loading share.
    limit = float(thresholds["data_wait_frac"])
    waits = [r for r in done if d.num(r, "data_wait_frac") is not None]
    if waits:
        over = sorted((r for r in waits if d.num(r, "data_wait_frac") > limit),
                      key=lambda r: -d.num(r, "data_wait_frac"))
        if over:
            listed = "; ".join(f"{_where(r)}: {fmt_num(100 * d.num(r, 'data_wait_frac'))} %"
                               for r in over)
            out.append(f"Data loading passes {fmt_num(100 * limit)} % of the step time in "
                       f"{len(over)} of {len(waits)} runs: {listed}.")
        else:
            top = max(waits, key=lambda r: d.num(r, "data_wait_frac"))
            out.append(f"Data loading stays under {fmt_num(100 * limit)} % of the step time in every "
                       f"run (highest {fmt_num(100 * d.num(top, 'data_wait_frac'))} %, {_where(top)}).")
    else:
        out.append("No run recorded data_wait_frac, so the data-loading share is unknown.")

    # Strong-scaling efficiency.
    floor = float(thresholds["scaling_efficiency"])
    if groups["strong"]:
        drops, lowest = [], None
        for g in groups["strong"]:
            for r in g["runs"]:
                if r["ideal_speedup"] <= 1:
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
            out.append(f"Strong-scaling efficiency drops below {fmt_num(100 * floor)} % for {listed}.")
        elif lowest is not None:
            out.append(
                f"Strong-scaling efficiency stays at or above {fmt_num(100 * floor)} % everywhere "
                f"(lowest {fmt_num(100 * lowest['scaling_efficiency'])} %, {_where(lowest)}).")
    elif groups.get("unmeasured", {}).get("strong"):
        out.append("Runs at several node counts recorded no throughput, so there is no "
                   "strong-scaling result.")
    else:
        out.append("No configuration ran at more than one node count, so there is no "
                   "strong-scaling result.")

    # Precision.
    pairs = d.precision_pairs(rows, precision_key)
    if pairs:
        for (a, b), items in sorted(pairs.items()):
            ratios = [x[0] for x in items]
            gm = d.geometric_mean(ratios)
            faster, slower, factor = (b, a, gm) if gm >= 1 else (a, b, 1 / gm)
            spread = _span(r if gm >= 1 else 1 / r for r in ratios)
            extra = (f", range {fmt_range(*spread)}\u00d7" if len(ratios) > 1 else "")
            out.append(
                f"{faster} is {fmt_num(factor)}\u00d7 faster than {slower} per epoch "
                f"(geometric mean over {len(ratios)} matched configuration"
                f"{'s' if len(ratios) != 1 else ''}{extra}).")
    elif len({str(r.get("precision")) for r in done}) > 1:
        out.append("The sweep ran several precisions but no two runs match otherwise, "
                   "so precisions are not compared.")
    else:
        out.append("The sweep ran one precision only, so precisions are not compared.")

    if any(d.is_emulated(r) for r in done):
        out.append(f"Nodes marked {DAGGER} were emulated as process groups on one machine: they "
                   "share its cores and memory, so their scaling says little about a real cluster.")
    return out


# ---------------------------------------------------------------- the whole page
def status_line(rows: list[dict]) -> str:
    counts = Counter(r.get("status") for r in rows)
    parts = [f"{counts.get(STATUS_COMPLETE, 0)} complete"]
    for status in (STATUS_FAILED, STATUS_MISSING):
        if counts.get(status):
            label = "missing metrics.json" if status == STATUS_MISSING else status
            parts.append(f"{counts[status]} {label}")
    others = sorted(s for s in counts if s not in (STATUS_COMPLETE, STATUS_FAILED, STATUS_MISSING))
    parts += [f"{counts[s]} {s}" for s in others]
    return f"{len(rows)} jobs: " + ", ".join(parts)


def render(rows: list[dict], groups: dict, cfg: dict, sweeps: list[str],
           figures: list[str], notes: list[str]) -> str:
    """summary.md as text; figures are file names relative to the summary."""
    keys = cfg["keys"]
    out = [f"# {cfg['title']}", ""]
    out.append("Sweep" + ("s" if len(sweeps) > 1 else "") + ": "
               + ", ".join(f"`{s}`" for s in sweeps) + ".  ")
    out.append(status_line(rows) + ".")
    if any(d.is_emulated(r) for r in rows):
        out.append(f"\n{DAGGER} Nodes emulated as process groups on one machine "
                   "(hollow markers and dashed lines in the figures).")
    out += ["", "## Summary (SAIH Table 8)", "",
            md_table(["Item", "Value"], table8(rows, cfg["application"], groups)), ""]
    out += ["## Findings", ""]
    out += [f"- {s}" for s in findings(rows, groups, cfg["thresholds"], keys["precision_match"])]
    out.append("")
    sections = [
        ("Per-model cost (SAIH Table 3)", table3(rows)),
        ("Time per epoch by precision (SAIH Table 6)", table6(rows, keys["precision_match"])),
        ("Strong scaling", scaling_table(groups)),
        ("Weak scaling", weak_table(groups)),
    ]
    for title, table in sections:
        if table:
            out += [f"## {title}", "", md_table(*table), ""]
    if figures:
        out += ["## Figures", ""]
        out += [f"![{name}]({name})" for name in figures]
        out.append("")
    out += ["## Jobs", "", md_table(*jobs_table(rows)), ""]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    out += ["Definitions: docs/report.md. Every job with all its metrics: `runs.csv`.", ""]
    return "\n".join(out)
