"""SAIH Table 8: the numbers behind it (``ranges``) and its (item, value) rows (``table8``).

``ranges`` returns plain floats so tests can check them exactly; the text helpers turn them
into the cells of summary.md.
"""

from __future__ import annotations

from collections import defaultdict

from src.report import derive as d
from src.report.augment import data_augment_text
from src.report.flags import MARK, flagged
from src.report.fmt import DAGGER, fmt_bytes, fmt_range, fmt_si_range
from src.report.quality import quality_rows

NO_THROUGHPUT = "n/a (no throughput metrics: did the throughput callback run?)"
ALL_FLAGGED = "n/a (every run is flagged: see Findings; report.include_flagged=true shows them)"


def _dataset_gb(row: dict) -> float | None:
    size = d.num(row, "dataset_bytes")
    return size and size / 1e9


def ranges(rows: list[dict], include_flagged: bool = False) -> dict[str, tuple[float, float] | None]:
    """Min and max of each Table 8 quantity over the complete runs (None: no data). The
    measured quantities leave flagged runs out (src.report.flags) unless `include_flagged`;
    what a run is (data, model, FLOPs per sample, loss) counts from every complete run."""
    every = d.complete(rows)
    done = every if include_flagged else [r for r in every if not flagged(r)]
    single = [r for r in done if d.world_size(r) == 1]
    scaled = [r for r in done if r.get("ideal_speedup") is not None and r["ideal_speedup"] > 1]
    weak = [r for r in done if r.get("weak_world_ratio") is not None and r["weak_world_ratio"] > 1]

    def over_done(key: str) -> tuple[float, float] | None:
        return d.span(d.num(r, key) for r in done)

    def over_every(key: str) -> tuple[float, float] | None:
        return d.span(d.num(r, key) for r in every)

    return {
        "dataset_gb": d.span(_dataset_gb(r) for r in every),
        "n_train_samples": over_every("n_train_samples"),
        "n_val_samples": over_every("n_val_samples"),
        "flops_per_sample_forward": over_every("flops_per_sample_forward"),
        "flops_per_sample_train": over_every("flops_per_sample_train"),
        "tflops_aggregate": d.span(d.tflops_aggregate(r) for r in done),
        "pct_of_peak": d.span(d.pct_of_peak(r) for r in done),
        "tflops_single_device": d.span(d.tflops_per_device(r) for r in single),
        "pct_of_peak_single_device": d.span(d.pct_of_peak(r) for r in single),
        "tflops_per_device": d.span(d.tflops_per_device(r) for r in done),
        "speedup": d.span(r["speedup"] for r in scaled),
        "scaling_efficiency": d.span(r["scaling_efficiency"] for r in scaled),
        "speedup_nodes": d.span(d.num(r, "num_nodes") for r in scaled),
        "weak_scaling_efficiency": d.span(r["weak_scaling_efficiency"] for r in weak),
        "weak_nodes": d.span(d.num(r, "num_nodes") for r in weak),
        "arithmetic_intensity": over_every("arithmetic_intensity"),
        "train_loss": over_every("train/loss"),
        "val_loss": over_every("val/loss"),
        "data_wait_frac": over_done("data_wait_frac"),
        "num_nodes": over_every("num_nodes"),
        "world_size": d.span(d.world_size(r) for r in every),
    }


# ---------------------------------------------------------------- the System row
def _emulated_note(rows: list[dict]) -> str:
    flags = {d.is_emulated(r) for r in rows}
    if flags == {True}:
        return f" {DAGGER}emulated on one machine"
    if True in flags:
        return f" ({DAGGER}: emulated on one machine)"
    return ""


def _machines(with_sys: list[dict]) -> list[str]:
    """One description per distinct machine the jobs recorded."""
    parts = []
    machines: dict[tuple, set] = defaultdict(set)
    for r in with_sys:
        machines[(r.get("gpu_name"), r.get("gpu_mem_bytes"), r.get("n_gpus"), r.get("cpu_model"),
                  r.get("n_cpus"), r.get("mem_bytes"))].add(r.get("hostname"))
    for (gpu, gpu_mem, n_gpus, cpu, n_cpus, mem), hosts in machines.items():
        devices = d.unique([r for r in with_sys if r.get("gpu_name") == gpu], "devices")
        per_node = "/".join(str(x) for x in sorted(devices)) or "?"
        host_text = f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}"
        cpu_text = f"{cpu or 'unknown CPU'}, {n_cpus or '?'} CPUs, {fmt_bytes(d.as_float(mem))} RAM"
        if gpu:
            memory = f" ({fmt_bytes(d.as_float(gpu_mem))})" if gpu_mem else ""
            seen = f" ({n_gpus} visible)" if n_gpus and str(n_gpus) != per_node else ""
            parts.append(f"{per_node} \u00d7 {gpu}{memory} per node{seen}; host {cpu_text}; "
                         f"{host_text}")
        else:
            ranks = "rank" if per_node == "1" else "ranks"
            parts.append(f"CPU only: {cpu_text}; {per_node} {ranks} per node; {host_text}")
    return parts


def describe_system(rows: list[dict]) -> str:
    """'CPU model or GPU name, counts, memory', from what the jobs recorded."""
    with_sys = [r for r in rows if r.get("hostname") or r.get("cpu_model") or r.get("gpu_name")]
    if not with_sys:
        return "n/a (no job recorded its system)"
    parts = _machines(with_sys)
    done = d.complete(rows) or rows
    nodes = d.span(d.num(r, "num_nodes") for r in done)
    ws = d.span(d.world_size(r) for r in done)
    if nodes:
        dag = DAGGER if any(d.is_emulated(r) for r in done) else ""
        parts.append(f"{fmt_range(*nodes)} nodes{dag} ({fmt_range(*ws)} ranks)"
                     + _emulated_note(done))
    return "; ".join(parts)


# ---------------------------------------------------------------- the other measured rows
def _framework(rows: list[dict]) -> str:
    torch_v = ", ".join(str(v) for v in d.unique(rows, "torch")) or "?"
    light_v = ", ".join(str(v) for v in d.unique(rows, "lightning")) or "?"
    precisions = ", ".join(str(v) for v in d.unique(rows, "precision"))
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


def _joined(parts: list[str | None]) -> str:
    """The parts that are there, '; '-joined, or 'n/a'."""
    return "; ".join(p for p in parts if p) or "n/a"


def _flops_text(rg: dict) -> str:
    fw, tr = rg["flops_per_sample_forward"], rg["flops_per_sample_train"]
    return _joined([fw and f"forward {fmt_si_range(*fw, 'FLOP')}/sample",
                    tr and f"training {fmt_si_range(*tr, 'FLOP')}/sample"])


def _loss_text(rg: dict) -> str:
    train, val = rg["train_loss"], rg["val_loss"]
    return _joined([train and f"train {fmt_range(*train)}",
                    val and f"validation {fmt_range(*val)}"])


def _dataset_text(rg: dict) -> str:
    samples = None
    if rg["n_train_samples"]:
        samples = f"{fmt_range(*rg['n_train_samples'], digits=12)} training samples"
        if rg["n_val_samples"]:
            samples += f" + {fmt_range(*rg['n_val_samples'], digits=12)} validation"
    return _joined([rg["dataset_gb"] and f"{fmt_range(*rg['dataset_gb'])} GB", samples])


def _perf_text(rg: dict, flops_key: str, pct_key: str, any_done: bool) -> str:
    span = rg[flops_key]
    if not span:
        return NO_THROUGHPUT if any_done else "n/a"
    text = fmt_si_range(span[0] * 1e12, span[1] * 1e12, "FLOP/s")
    if rg[pct_key]:
        text += f" ({fmt_range(*rg[pct_key])} % of peak)"
    return text


def _speedup_text(rg: dict, unmeasured: dict, dag: str) -> str:
    if not rg["speedup"]:
        if unmeasured.get("strong"):
            return NO_THROUGHPUT
        return "n/a (no configuration ran at more than one node count)"
    efficiency = fmt_range(*(100 * x for x in rg["scaling_efficiency"]))
    return (f"{fmt_range(*rg['speedup'])}\u00d7 at {fmt_range(*rg['speedup_nodes'])} "
            f"nodes{dag} (efficiency {efficiency} %)")


def _weak_text(rg: dict, unmeasured: dict, dag: str) -> str:
    if not rg["weak_scaling_efficiency"]:
        if unmeasured.get("weak"):
            return NO_THROUGHPUT
        return "n/a (no runs where the data grows with the nodes)"
    lo, hi = rg["weak_scaling_efficiency"]
    return f"{fmt_range(100 * lo, 100 * hi)} % at {fmt_range(*rg['weak_nodes'])} nodes{dag}"


def _peak_text(done: list[dict]) -> str:
    # Measured peaks vary run to run: one range per precision and source.
    peak_runs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in done:
        peak = d.num(r, "peak_flops_per_device")
        if peak:
            peak_runs[(str(r.get("precision")), str(r.get("peak_flops_source") or "?"))].append(peak)
    return "; ".join(f"{prec}: {fmt_si_range(min(v), max(v), 'FLOP/s')} ({src})"
                     for (prec, src), v in sorted(peak_runs.items())) or "n/a"


def _flagged_text(rows: list[dict], include_flagged: bool) -> str:
    bad = [r for r in d.complete(rows) if flagged(r)]
    if not bad:
        return "none"
    labels = ", ".join(str(r.get("run_id") or r.get("job")) for r in bad)
    where = ("included in the ranges above (report.include_flagged)" if include_flagged
             else "left out of the measured ranges above (report.include_flagged=true keeps them)")
    return f"{MARK} {len(bad)} of {len(d.complete(rows))} ({labels}): {where}; see Findings"


def table8(rows: list[dict], app: dict, groups: dict | None = None,
           include_flagged: bool = False) -> list[tuple[str, str]]:
    """(item, value) pairs of the SAIH Table 8 summary."""
    every = d.complete(rows)
    done = every if include_flagged else [r for r in every if not flagged(r)]
    unmeasured = (groups or {}).get("unmeasured", {})
    rg = ranges(rows, include_flagged)
    dag = DAGGER if any(d.is_emulated(r) for r in every) else ""
    models = d.models(every) or d.models(rows)
    ai, wait = rg["arithmetic_intensity"], rg["data_wait_frac"]

    def measured(text: str) -> str:
        return ALL_FLAGGED if every and not done else text

    single = (_perf_text(rg, "tflops_single_device", "pct_of_peak_single_device", bool(done))
              if any(d.world_size(r) == 1 for r in done) else "n/a (no 1-rank run)")
    return [
        ("Domain", app.get("domain", "")),
        ("Data augment", data_augment_text(every, app)),
        ("Model augment", app.get("model_augment", "")),
        ("DNN model", app.get("dnn_model", "") + (f"; models: {', '.join(models)}" if models else "")),
        ("Data format", _data_format(every or rows, app.get("data_format", ""))),
        ("Framework", _framework(every or rows)),
        ("Dataset size", _dataset_text(rg)),
        ("System", describe_system(rows)),
        ("Peak FLOP/s per device", _peak_text(every)),
        ("Model FLOPs", _flops_text(rg)),
        (f"Aggregate FLOP/s{dag}",
         measured(_perf_text(rg, "tflops_aggregate", "pct_of_peak", bool(done)))),
        ("Single-device FLOP/s", measured(single)),
        ("Per-device FLOP/s (all runs)",
         measured(_perf_text(rg, "tflops_per_device", "pct_of_peak", bool(done)))),
        (f"Strong-scaling speed-up{dag}", measured(_speedup_text(rg, unmeasured, dag))),
        (f"Weak-scaling efficiency{dag}", measured(_weak_text(rg, unmeasured, dag))),
        ("Arithmetic intensity", f"{fmt_range(*ai)} FLOP/byte" if ai else "n/a"),
        ("Data-loading share", measured(f"{fmt_range(100 * wait[0], 100 * wait[1])} % of step "
                                        "time" if wait else "n/a")),
        ("Loss (final)", _loss_text(rg)),
        *quality_rows(every, done),
        ("Flagged runs", _flagged_text(rows, include_flagged)),
    ]
