"""loss_curves.png: one panel per model, the train/loss line and val/loss dots of each run,
against the optimizer step or the wall time since the fit started (`report.loss_curves_x`),
with the baselines each run measured on its validation set (src/callbacks/quality.py) as
horizontal lines, so a curve that never gets under them is seen to learn nothing."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.lines import Line2D  # noqa: E402

from src.report import derive as d  # noqa: E402
from src.report.fmt import fmt_nodes  # noqa: E402
from src.report.plot_style import emulated_handle, label, plain_log_ticks, varying  # noqa: E402

X_AXES = {"step": (0, "optimizer step"), "time": (2, "wall time since the fit started (s)")}
# baseline val MSE -> its line style and legend text
BASELINES = {"baseline_stats_mse": (":", "summary-statistics baseline (val MSE)"),
             "baseline_mean_mse": ("-.", "training-mean baseline (val MSE)")}


def _points(row: dict, name: str, x_index: int) -> list[tuple[float, float]]:
    return [(p[x_index], p[1]) for p in (row["history"].get(name) or [])
            if len(p) > x_index and p[1] is not None]


def _baselines(ax, runs: list[dict]) -> list[Line2D]:
    """One horizontal line per baseline kind: the median over the panel's runs."""
    handles = []
    for key, (style, text) in BASELINES.items():
        values = sorted(v for v in (d.num(r, key) for r in runs) if v is not None)
        if values:
            ax.axhline(values[len(values) // 2], color="0.2", linestyle=style, linewidth=1.2)
            handles.append(Line2D([], [], color="0.2", linestyle=style, label=text))
    return handles


def _panel(ax, runs: list[dict], vary: list[str], x_index: int) -> bool:
    """Draw the runs of one model; True when every value is positive (log axis)."""
    positive = True
    for i, r in enumerate(runs):
        color, hollow = f"C{i % 10}", d.is_emulated(r)
        key = {"num_nodes": fmt_nodes(r), "fraction": r.get("fraction"),
               "precision": r.get("precision")}
        text = label(key, vary) if vary else f"job {r.get('run_id')}"
        for name in ("train/loss", "val/loss"):
            points = _points(r, name, x_index)
            if not points:
                continue
            positive &= all(y > 0 for _, y in points)
            train = name == "train/loss"
            ax.plot([p[0] for p in points], [p[1] for p in points], color=color,
                    linestyle=("--" if hollow else "-") if train else "none",
                    marker=None if train else "o", markersize=6,
                    markerfacecolor="white" if hollow else color, label=text)
            text = None  # one legend entry per run
    return positive


def loss_curves(rows, out_dir: Path, dpi, max_runs_per_model: int,
                x_axis: str = "step") -> str | None:
    x_index, x_label = X_AXES[x_axis]
    done = [r for r in d.complete(rows)
            if any(_points(r, k, x_index) for k in ("train/loss", "val/loss"))]
    if not done:
        return None
    models = sorted({str(r.get("model")) for r in done})
    vary = varying(done, ["num_nodes", "fraction", "precision"])
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 5.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        runs = [r for r in done if str(r.get("model")) == model][:max_runs_per_model]
        positive = _panel(ax, runs, vary, x_index)
        extra = _baselines(ax, runs)
        if positive:
            ax.set_yscale("log")
            plain_log_ticks(ax.yaxis)
        ax.set_title(f"model {model}")
        ax.set_xlabel(x_label)
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="0.3", label="train/loss (line)"),
                    Line2D([], [], color="0.3", marker="o", linestyle="none",
                           label="val/loss (dots)"), *extra]
        if any(d.is_emulated(r) for r in runs):
            handles.append(emulated_handle())
        # Below the axes: many runs would hide the curves.
        ax.legend(handles=handles, fontsize="x-small", loc="upper center",
                  bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.suptitle("Loss curves per model")
    fig.tight_layout()
    path = out_dir / "loss_curves.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path.name
