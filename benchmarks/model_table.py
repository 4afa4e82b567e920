"""The shipped models beside the paper's: parameters, training FLOPs per sample, weights,
activations and arithmetic intensity, counted at the paper's 128^3 cube (docs/models.md).

    python -m benchmarks.model_table                      # 1 and 4 channels, both DARTS heads
    python -m benchmarks.model_table --size 32 --channels 1 --head-pools 1
    python -m benchmarks.model_table --costs              # docs/models.md's cost-per-sample rows
    python -m benchmarks.model_table --stages             # FLOPs and parameters by stage

Every count runs on the meta device (no arithmetic, no memory): parameters and FLOPs with
`src.perf.flops` (thop, Eq. 1), weights (parameters + buffers, fp32) and the activations a
training step saves for its backward per sample with `src.perf.memory`, and the forward pass's
minimum-traffic arithmetic intensity (`src.perf.flops.layer_traffic`) at the paper's
per-GPU batch (Table 3's: 10, 4, 1). The paper's own figures print beside ours; its intensity
is measured with nvprof on V100s, ours is a traffic lower bound, so only the order and the
ratios compare (docs/models.md says why).
"""

from __future__ import annotations

import argparse
import json

import torch
from hydra.utils import instantiate

from benchmarks.profile_step import train_cfg
from src.nas.model_filter import count_cost
from src.perf.flops import layer_traffic
from src.perf.memory import saved_activation_bytes, weights_bytes

# SAIH paper, section 4.3 (parameters, training FLOPs), Table 3 (batch per GPU, intensity)
# and section 5 (memory of medium/large relative to small). The small model's parameter count
# is not in the paper; its 69 GFLOPs are forward FLOPs (3 x for training).
PAPER = {
    "small": {"parameters": None, "train_tflops": 3 * 0.069, "batch": 10, "intensity": 808,
              "mem_vs_small": 1.0},
    "medium": {"parameters": 101.6e6, "train_tflops": 4.15, "batch": 4, "intensity": 2500,
               "mem_vs_small": 3.79},
    "large": {"parameters": 374.2e6, "train_tflops": 16.2, "batch": 1, "intensity": 1442,
              "mem_vs_small": 7.46},
}
MODELS = ("small", "medium", "large")


def build(model: str, channels: int, size: int, head_pool: int | None):
    overrides = [f"model={model}"]
    if head_pool is not None:
        overrides.append(f"model.net.head_pool={head_pool}")
    return instantiate(train_cfg(*overrides).model.net, in_channels=channels, input_size=size,
                       n_params=3)


def measure(model: str, channels: int, size: int, head_pool: int | None = None) -> dict:
    """One row: the counts of `model` for channels x size^3 inputs."""
    shape = (channels, size, size, size)
    with torch.device("meta"):  # a flattening head at 128^3 has ~1e9 parameters
        net = build(model, channels, size, head_pool)
    cost = count_cost(lambda: net, shape)
    weights = weights_bytes(net)
    acts = saved_activation_bytes(net, shape, batch_size=1)
    batch = PAPER[model]["batch"]
    # conv + dense FLOPs and minimum bytes per layer: the intensity, and what thop books beyond
    # convolutions and dense layers (BatchNorm, pooling) in Eq. 1's count
    layers = layer_traffic(net, shape, batch_size=batch)
    conv_fc = sum(r["flops"] for r in layers)
    return {
        "model": model, "channels": channels, "size": size,
        "head_pool": getattr(net, "head_pool", None),
        "parameters": cost["n_parameters"],
        "forward_gflops": cost["flops_per_sample_forward"] / 1e9,
        "train_tflops": cost["flops_per_sample_train"] / 1e12,
        "weights_mb": weights / 1e6, "activations_mb": acts / 1e6,
        "act_over_weights": acts / weights,
        "batch": batch, "intensity": conv_fc / sum(r["bytes"] for r in layers),
        "bn_pool_share": 1 - conv_fc / batch / cost["flops_per_sample_forward"],
    }


def rows_for(channels: list[int], size: int, head_pools: list[int]) -> list[dict]:
    rows = []
    for ch in channels:
        block = [measure("small", ch, size)]
        for model in MODELS[1:]:
            block += [measure(model, ch, size, hp) for hp in head_pools]
        for r in block:  # one sample each, and each model at its paper batch
            r["mem_vs_small"] = _footprint(r, 1) / _footprint(block[0], 1)
            r["mem_batch_vs_small"] = _footprint(r, r["batch"]) / _footprint(block[0],
                                                                           block[0]["batch"])
        rows += block
    return rows


def _footprint(row: dict, batch: int) -> float:
    return row["weights_mb"] + batch * row["activations_mb"]


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(rows: list[dict]) -> str:
    head = ("| model | C_in | head_pool | parameters | paper | train TFLOPs | paper | "
            "weights MB | activations MB / sample | act / weights | (w + a) / small | "
            "(w + batch a) / small | paper | "
            "intensity FLOP/B (batch) | paper | thop MACs in BN + pools |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        p = PAPER[r["model"]]
        paper_params = "—" if p["parameters"] is None else f"{p['parameters'] / 1e6:.1f} M"
        lines.append(
            f"| {r['model']} | {r['channels']} | {_fmt(r['head_pool'], 'd')} | "
            f"{r['parameters'] / 1e6:.2f} M | {paper_params} | {r['train_tflops']:.3f} | "
            f"{p['train_tflops']:.3g} | {r['weights_mb']:.1f} | {r['activations_mb']:.0f} | "
            f"{r['act_over_weights']:.1f} | {r['mem_vs_small']:.2f} | "
            f"{r['mem_batch_vs_small']:.2f} | {p['mem_vs_small']:.2f} | "
            f"{r['intensity']:.0f} ({r['batch']}) | {p['intensity']} | "
            f"{100 * r['bn_pool_share']:.1f} % |")
    return "\n".join(lines)


# (channels, cube side); 128^3 x 1 is in the table beside the paper
COST_SHAPES = [(4, 32), (4, 64), (4, 128), (1, 32)]


def cost_rows() -> str:
    """The rows of docs/models.md's cost table (tests/test_nas_models.py recounts them)."""
    lines = []
    for ch, size in COST_SHAPES:
        for model in MODELS:
            with torch.device("meta"):
                net = build(model, ch, size, None)
            c = count_cost(lambda net=net: net, (ch, size, size, size))
            lines.append(f"| {model} | {size}^3 | {ch} | {c['n_parameters']:,} | "
                         f"{c['flops_per_sample_forward'] / 1e9:.3f} | "
                         f"{c['flops_per_sample_train'] / 1e9:.3f} |")
    return "\n".join(lines)


def _stage(name: str, reductions: list[int]) -> str:
    """The resolution stage of a parameter or layer name: stem, the cells between two
    reduction cells (a reduction cell opens its stage), head."""
    if not name.startswith("cells."):
        return name.split(".")[0]
    i = int(name.split(".")[1])
    return f"cells from {max(r for r in reductions if r <= i)}"


def stage_shares(model: str, channels: int = 1, size: int = 128) -> str:
    """Where a DARTS net's conv + dense FLOPs and its parameters sit, by resolution stage."""
    with torch.device("meta"):
        net = build(model, channels, size, None)
    flops, params = {}, {}
    for r in layer_traffic(net, (channels, size, size, size)):
        key = _stage(r["name"], net.reductions)
        flops[key] = flops.get(key, 0) + r["flops"]
    for name, p in net.named_parameters():
        key = _stage(name, net.reductions)
        params[key] = params.get(key, 0) + p.numel()
    total_f, total_p = sum(flops.values()), sum(params.values())
    return "\n".join(f"{model} {key}: {100 * flops.get(key, 0) / total_f:.1f} % of the FLOPs, "
                     f"{100 * params.get(key, 0) / total_p:.1f} % of the parameters"
                     for key in params)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--channels", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--head-pools", type=int, nargs="+", default=[1, 0],
                        help="DARTS heads to count: 1 = global average pool, 0 = flatten")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--costs", action="store_true",
                        help="print the cost-per-sample rows of docs/models.md instead")
    parser.add_argument("--stages", action="store_true",
                        help="print where the DARTS nets' FLOPs and parameters sit instead")
    args = parser.parse_args(argv)
    if args.stages:
        print("\n".join(stage_shares(m, args.channels[0], args.size) for m in MODELS[1:]))
        return []
    if args.costs:
        print(cost_rows())
        return []
    rows = rows_for(args.channels, args.size, args.head_pools)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
