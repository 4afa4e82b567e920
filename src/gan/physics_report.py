"""Writing a physics validation (src/gan/physics.py: `validate`) to a campaign's directory:
gan_validation.json (the result as it is), gan_validation.md (the checks and each measure's
numbers as tables) and gan_validation.png (the figure); docs/gan_validation.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from src.util.atomic import atomic_path

# a page figure, not a poster: the table holds the numbers
FIGURE_DPI = 110
FILES = ("gan_validation.json", "gan_validation.md", "gan_validation.png")


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def markdown(result: dict) -> str:
    """gan_validation.md: the checks with their thresholds, then each measure's numbers."""
    verdict = "PASS" if result["passed"] else "FAIL"
    out = ["# GAN physics validation", "",
           f"**{verdict}**: {result['n_cubes']} generated cubes against as many simulated ones at "
           f"the same parameters; {result['channels']} channel(s) of {result['size']}^3 voxels, "
           f"box {result['box_size']:g} Mpc/h. A check passes when its value is at most its "
           "threshold (docs/gan_validation.md).", ""]
    out += _table(["check", "value", "threshold", "result", "what"],
                  [[c["name"], _f(c["value"]), _f(c["threshold"]),
                    "PASS" if c["passed"] else "FAIL", c["what"]] for c in result["checks"]])
    pk, one, s8, pe = result["pk"], result["one_point"], result["sigma8_response"], result["peaks"]
    out += ["## P(k) of the density contrast per k-bin", ""]
    out += _table(["channel", "k [h/Mpc]", "P_sim [(Mpc/h)^3]", "P_gen", "ratio", "std. error",
                   "beyond n_sigma"],
                  [[str(c), _f(k), _f(pk["sim"][c][i]), _f(pk["gen"][c][i]),
                    _f(pk["ratio"][c][i]), _f(pk["se"][c][i], 2), _f(pk["excess"][c][i], 2)]
                   for c in range(result["channels"]) for i, k in enumerate(pk["k"])])
    out += ["## One-point distribution of log(1 + counts)", ""]
    out += _table(["channel", "Kolmogorov-Smirnov", "Wasserstein-1"],
                  [[str(c), _f(one["ks"][c]), _f(one["wasserstein"][c])]
                   for c in range(result["channels"])])
    out += ["## Variance of the density contrast in sigma8_cell cells vs sigma_8 (slope at fixed "
            "Omega_M, n_s)", ""]
    out += _table(["channel", "slope sim", "slope gen", "relative error beyond n_sigma"],
                  [[str(c), f"{_f(s8['slope_sim'][c])} ± {_f(s8['se_sim'][c], 2)}",
                    f"{_f(s8['slope_gen'][c])} ± {_f(s8['se_gen'][c], 2)}",
                    _f(s8["rel_error"][c])] for c in range(result["channels"])])
    out += ["## Peaks of the smoothed density contrast above nu std, per cube", ""]
    out += _table(["channel", "nu", "sim", "gen", "relative error beyond n_sigma"],
                  [[str(c), _f(nu), _f(pe["sim"][c][i]), _f(pe["gen"][c][i]),
                    _f(pe["rel_error"][c][i]) if pe["rel_error"][c][i] is not None
                    else "not checked (no simulated peak)"]
                   for c in range(result["channels"]) for i, nu in enumerate(pe["nu"])])
    return "\n".join(out)


def figure(result: dict, path: Path, dpi: int = FIGURE_DPI) -> Path:
    """gan_validation.png: P(k) and its ratio, one-point histograms, variance vs sigma_8 with
    the fitted lines, peak counts vs nu and the peak-height histograms; solid sim, dashed gen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pk, one, s8, pe = result["pk"], result["one_point"], result["sigma8_response"], result["peaks"]
    fig, ax = plt.subplots(2, 3, figsize=(14, 8), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    centres = 0.5 * (np.asarray(one["bins"][1:]) + np.asarray(one["bins"][:-1]))
    x8 = np.asarray(s8["sigma_8"])
    line = np.linspace(x8.min(), x8.max(), 2)
    for c in range(result["channels"]):
        col = colours[c % len(colours)]
        tag = f" ch{c}" if result["channels"] > 1 else ""
        ax[0, 0].loglog(pk["k"], pk["sim"][c], "-", color=col, label=f"sim{tag}")
        ax[0, 0].loglog(pk["k"], pk["gen"][c], "--", color=col, label=f"gen{tag}")
        ratio, se = np.asarray(pk["ratio"][c]), np.asarray(pk["se"][c])
        ax[1, 0].errorbar(pk["k"], ratio, yerr=se, fmt="o-", color=col, capsize=2)
        ax[0, 1].step(centres, one["sim"][c], where="mid", color=col, label=f"sim{tag}")
        ax[0, 1].step(centres, one["gen"][c], "--", where="mid", color=col, label=f"gen{tag}")
        ax[1, 1].scatter(x8, s8["var_sim"][c], color=col, marker="o", label=f"sim{tag}")
        ax[1, 1].scatter(x8, s8["var_gen"][c], color=col, marker="x", label=f"gen{tag}")
        for kind, style in (("sim", "-"), ("gen", "--")):
            ax[1, 1].plot(line, s8[f"intercept_{kind}"][c] + s8[f"slope_{kind}"][c] * line,
                          style, color=col)
        ax[0, 2].plot(pe["nu"], pe["sim"][c], "o-", color=col, label=f"sim{tag}")
        ax[0, 2].plot(pe["nu"], pe["gen"][c], "x--", color=col, label=f"gen{tag}")
        edges = np.asarray(pe["height_bins"][c])
        ax[1, 2].stairs(pe["heights_sim"][c], edges, color=col, label=f"sim{tag}")
        ax[1, 2].stairs(pe["heights_gen"][c], edges, color=col, linestyle="--", label=f"gen{tag}")
    limit = result["thresholds"]["pk_max_ratio_error"]
    ax[1, 0].axhspan(1 - limit, 1 + limit, color="0.9", zorder=0)
    ax[1, 0].axhline(1.0, color="0.4", lw=0.8)
    ax[1, 0].set_xscale("log")
    titles = [("P(k) of the density contrast", "k [h/Mpc]", "P(k) [(Mpc/h)^3]"),
              ("one-point distribution", "log(1 + counts)", "density"),
              ("peaks above nu", "nu [std of the smoothed field]", "peaks per cube"),
              ("P_gen / P_sim (± std. error; band: threshold)", "k [h/Mpc]", "ratio"),
              ("variance vs sigma_8 (fit at fixed Omega_M, n_s)", "sigma_8",
               "var log(1 + counts)"),
              ("peak heights", "nu", "peaks per cube per bin")]
    for a, (title, xl, yl) in zip([*ax[0], *ax[1]], titles, strict=True):
        a.set_title(title, fontsize=10)
        a.set_xlabel(xl)
        a.set_ylabel(yl)
    for a in (ax[0, 0], ax[1, 0]):  # log k: the minor labels would overlap at full size
        a.tick_params(axis="x", which="minor", labelsize=7)
    for a in (ax[0, 0], ax[0, 1], ax[0, 2], ax[1, 1], ax[1, 2]):
        a.legend(fontsize=8)
    fig.suptitle("GAN physics validation: " + ", ".join(
        f"{c['name']} {'PASS' if c['passed'] else 'FAIL'}" for c in result["checks"]), fontsize=11)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def write_validation(out_dir, result) -> list[Path]:
    """gan_validation.{json,md,png} in `out_dir` (created); returns the three paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(markdown(result), encoding="utf-8")
    figure(result, paths[2])
    return paths
