"""The report's PNG figures (matplotlib, Agg: no display on a cluster node).

Every figure marks emulated nodes: hollow markers and dashed lines. Each function returns the
file name it wrote, or None when the sweep has no data for it (and says why in ``notes``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from src.report import derive as d  # noqa: E402
from src.report.fmt import fmt_fraction, fmt_nodes, si_scale  # noqa: E402
from src.report.loss_figure import loss_curves  # noqa: E402
from src.report.plot_style import (  # noqa: E402
    MARKERS,
    emulated_handle,
    errorbars,
    flagged_handle,
    label,
    plain_log_ticks,
    scaled,
    varying,
)
from src.report.repeats import bounds  # noqa: E402

# The memory ceiling of the roofline: the triad bandwidth the throughput callback measures.
BANDWIDTH_KEY = "mem_bandwidth_bytes_per_s"


def _lines(rows: list[dict], fields: Sequence[str], x_key: Callable[[dict], float | None]):
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if x_key(r) is not None:
            groups[d.group_key(r, fields)].append(r)
    return {k: sorted(v, key=x_key) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}


def _log2_axis(ax, values: Sequence[float], fmt: Callable[[float], str]) -> None:
    ticks = sorted(set(values))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([fmt(t) for t in ticks])
    if len(ticks) == 1:  # one tick would leave matplotlib a zero-width range
        ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)


def _finish(fig, ax, path: Path, rows: list[dict], dpi: int, below: bool = False):
    handles, labels = ax.get_legend_handles_labels()
    if any(d.is_emulated(r) for r in rows):
        handles.append(emulated_handle())
        labels.append(emulated_handle().get_label())
    if any(r.get("flags") for r in rows):
        handles.append(flagged_handle())
        labels.append(flagged_handle().get_label())
    if handles and below:  # where the legend must not hide lines or points
        ax.legend(handles, labels, fontsize="small", loc="upper center",
                  bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    elif handles:
        ax.legend(handles, labels, fontsize="small", loc="best")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _plot_lines(ax, lines: dict, fields: Sequence[str], vary: Sequence[str],
                x_of: Callable, y_of: Callable, scale: float, err_key: str) -> None:
    for i, (key, runs) in enumerate(lines.items()):
        runs = [r for r in runs if y_of(r) is not None]
        if runs:
            keyd = dict(zip(fields, key, strict=True))
            if "num_nodes" in keyd:
                keyd["num_nodes"] = fmt_nodes(runs[0])  # dagger for emulated nodes
            _series(ax, runs, x_of, lambda r: y_of(r) / scale, i, label(keyd, vary),
                    err_of=lambda r: scaled(bounds(r, err_key), 1 / scale))


def _series(ax, runs: list[dict], x_of: Callable, y_of: Callable, i: int, label: str | None,
            linestyle: str | None = None, marker: str | None = None,
            err_of: Callable | None = None) -> None:
    """One line; its emulated points get white (hollow) markers drawn over the filled ones,
    its min-max bars and red rings on flagged points."""
    color, marker = f"C{i % 10}", marker or MARKERS[i % len(MARKERS)]
    ax.plot([x_of(r) for r in runs], [y_of(r) for r in runs], color=color, marker=marker,
            label=label,
            linestyle=linestyle or ("--" if any(d.is_emulated(r) for r in runs) else "-"))
    errorbars(ax, runs, x_of, y_of, err_of or (lambda r: None), color)
    hollow = [r for r in runs if d.is_emulated(r)]
    if hollow:
        ax.plot([x_of(r) for r in hollow], [y_of(r) for r in hollow], color=color,
                marker=marker, markerfacecolor="white", linestyle="none")


def _flops_vs(rows, path, *, x_field, y_of, fields, title, ylabel, xlabel, xfmt, dpi,
              err_key, nodes_axis=True):
    x_of = (lambda r: d.num(r, x_field))  # noqa: E731
    data = [r for r in rows if y_of(r) is not None and x_of(r) is not None]
    if not data:
        return None
    lines = _lines(data, fields, x_of)
    vary = varying(data, fields)
    scale, prefix = si_scale(max(y_of(r) for r in data) * 1e12)
    scale /= 1e12  # values are in TFLOP/s
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _plot_lines(ax, lines, fields, vary, x_of, y_of, scale, err_key)
    _log2_axis(ax, [x_of(r) for r in data], xfmt)
    emulated = nodes_axis and any(d.is_emulated(r) for r in data)
    ax.set_xlabel(xlabel + (" (hollow markers: emulated)" if emulated else ""))
    ax.set_ylabel(f"{ylabel} ({prefix}FLOP/s)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    return _finish(fig, ax, path, data, dpi)


def _int_fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def aggregate_vs_nodes(rows, out_dir: Path, fields, dpi) -> str | None:
    return _flops_vs(rows, out_dir / "aggregate_tflops_vs_nodes.png", x_field="num_nodes",
                     y_of=d.tflops_aggregate, fields=fields, err_key="tflops_aggregate",
                     title="Aggregate throughput vs nodes", ylabel="aggregate throughput",
                     xlabel="nodes", xfmt=_int_fmt, dpi=dpi)


def per_device_vs_nodes(rows, out_dir: Path, fields, dpi) -> str | None:
    return _flops_vs(rows, out_dir / "per_device_tflops_vs_nodes.png", x_field="num_nodes",
                     y_of=d.tflops_per_device, fields=fields, err_key="tflops_per_device",
                     title="Per-device throughput vs nodes", ylabel="throughput per device",
                     xlabel="nodes", xfmt=_int_fmt, dpi=dpi)


def per_device_vs_fraction(rows, out_dir: Path, fields, dpi) -> str | None:
    return _flops_vs(rows, out_dir / "per_device_tflops_vs_fraction.png", x_field="fraction",
                     y_of=d.tflops_per_device, fields=fields, err_key="tflops_per_device",
                     title="Per-device throughput vs data fraction",
                     ylabel="throughput per device", xlabel="data fraction of the training set",
                     xfmt=fmt_fraction, dpi=dpi, nodes_axis=False)


def speedup_vs_nodes(groups: dict, out_dir: Path, fields, dpi) -> str | None:
    if not groups["strong"]:
        return None
    runs_all = [r for g in groups["strong"] for r in g["runs"]]
    vary = varying(runs_all, fields)
    nodes = lambda r: d.num(r, "num_nodes")  # noqa: E731
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, g in enumerate(groups["strong"]):
        runs = sorted(g["runs"], key=nodes)
        _series(ax, runs, nodes, lambda r: r["speedup"], i, label(g["key"], vary),
                err_of=lambda r: scaled(bounds(r, "tflops_aggregate"),
                                         r["speedup"] / d.tflops_aggregate(r)))
        ax.plot([nodes(r) for r in runs], [r["ideal_speedup"] for r in runs], color="0.5",
                linestyle=":", linewidth=1.5, label="ideal (world-size ratio)" if i == 0 else None)
    _log2_axis(ax, [nodes(r) for r in runs_all], _int_fmt)
    ax.set_yscale("log", base=2)
    ys = [r["speedup"] for r in runs_all] + [r["ideal_speedup"] for r in runs_all]
    ticks = [2.0**k for k in range(-6, 12) if min(ys) / 2 <= 2.0**k <= max(ys) * 2]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_yticklabels([_int_fmt(t) if t >= 1 else f"1/{int(1 / t)}" for t in ticks])
    emu = any(d.is_emulated(r) for r in runs_all)
    ax.set_xlabel("nodes" + (" (hollow markers: emulated)" if emu else ""))
    ax.set_ylabel("speed-up (\u00d7, ratio of aggregate FLOP/s)")
    ax.set_title("Strong-scaling speed-up vs ideal")
    return _finish(fig, ax, out_dir / "speedup_vs_nodes.png", runs_all, dpi)


def roofline(rows, out_dir: Path, dpi, notes: list[str]) -> str | None:
    done = [r for r in d.complete(rows) if d.num(r, "arithmetic_intensity")
            and d.tflops_per_device(r)]
    if not done:
        notes.append("Roofline skipped: no complete run recorded arithmetic_intensity and "
                     "per-device FLOP/s.")
        return None
    bw = [b for b in (d.num(r, BANDWIDTH_KEY) for r in done) if b]
    # One ceiling per precision: the best measured peak (a micro-benchmark only under-reads).
    best: dict[str, float] = {}
    for r in done:
        peak = d.num(r, "peak_flops_per_device")
        if peak:
            best[str(r.get("precision"))] = max(peak, best.get(str(r.get("precision")), 0.0))
    peaks = set(best.items())
    if not bw or not peaks:
        missing = [n for n, v in ((BANDWIDTH_KEY, bw),
                                   ("peak_flops_per_device", peaks)) if not v]
        notes.append(f"Roofline skipped: no run recorded {' or '.join(missing)} "
                     "(measured ceilings are needed to place the models).")
        return None
    bandwidth = max(bw)  # best measured triad bandwidth is the memory ceiling
    ais = [d.num(r, "arithmetic_intensity") for r in done]
    ridges = [p / bandwidth for _, p in peaks]
    lo, hi = min(ais + ridges) / 4, max(ais + ridges) * 4
    scale, prefix = si_scale(max(p for _, p in peaks))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = [lo * (hi / lo) ** (k / 200) for k in range(201)]
    for j, (precision, peak) in enumerate(sorted(peaks, key=lambda t: t[1])):
        ax.plot(xs, [min(peak, x * bandwidth) / scale for x in xs], color="k",
                linestyle=["-", "-.", ":", "--"][j % 4], linewidth=1.2,
                label=f"ceiling {precision}: {_si(peak)}FLOP/s, ridge {peak / bandwidth:.3g} FLOP/B")
    ax.plot([], [], color="none", label=f"memory ceiling: {_si(bandwidth)}B/s (measured triad)")
    for i, model in enumerate(sorted({str(r.get("model")) for r in done})):
        runs = [r for r in done if str(r.get("model")) == model]
        _series(ax, runs, lambda r: d.num(r, "arithmetic_intensity"),
                lambda r: d.tflops_per_device(r) * 1e12 / scale, i, f"model {model}",
                linestyle="none",
                err_of=lambda r: scaled(bounds(r, "tflops_per_device"), 1e12 / scale))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(top=max(p for _, p in peaks) / scale * 1.6)  # room above the highest ceiling
    plain_log_ticks(ax.xaxis)
    plain_log_ticks(ax.yaxis)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel(f"achieved throughput per device ({prefix}FLOP/s)")
    ax.set_title("Roofline: each run on the measured compute and bandwidth ceilings")
    return _finish(fig, ax, out_dir / "roofline.png", done, dpi, below=True)


def _si(value: float) -> str:
    factor, prefix = si_scale(value)
    return f"{value / factor:.3g} {prefix}"


def make_all(rows: list[dict], groups: dict, out_dir: Path, cfg: dict,
             notes: list[str]) -> list[Path]:
    """Write every figure the sweep has data for; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dpi = int(cfg.get("dpi", 120))
    done = d.complete(rows)
    keys = cfg["keys"]
    names = [
        aggregate_vs_nodes(done, out_dir, keys["nodes_line"], dpi),
        per_device_vs_nodes(done, out_dir, keys["nodes_line"], dpi),
        per_device_vs_fraction(done, out_dir, keys["fraction_line"], dpi),
        speedup_vs_nodes(groups, out_dir, keys["strong_scaling"], dpi),
        loss_curves(done, out_dir, dpi, int(cfg.get("loss_curves_max_runs", 12)),
                    str(cfg.get("loss_curves_x", "step"))),
        roofline(done, out_dir, dpi, notes),
    ]
    if names[3] is None:
        why = ("runs at several node counts recorded no throughput"
               if groups["unmeasured"]["strong"] else
               "no configuration ran at more than one node count")
        notes.append(f"Speed-up figure skipped: {why}.")
    if not any(names[:3]):
        notes.append("Throughput figures skipped: no complete run recorded tflops_aggregate or "
                     "tflops_per_device.")
    return [out_dir / n for n in names if n]
