"""Profile one training step (forward, MSE, backward, Adam) of a model: the top operators.

    python -m benchmarks.profile_step --model medium --size 32 --batch 2
    python -m benchmarks.profile_step --model medium --bf16          # under bf16 autocast
    python -m benchmarks.profile_step --no-fast-depthwise         # torch's depthwise paths
    python -m benchmarks.profile_step --no-cpu-kernels            # without the compiled kernels
    python -m benchmarks.profile_step --no-fused-adam             # torch's per-tensor Adam loop

channels_last_3d, fused Adam and the process settings of the CPU defaults (conf/speed/cpu.yaml,
conf/optim/adam.yaml); three warm-up steps (the kept heap settles), then one profiled step; the
Adam step's total time is printed after the table.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]


def step_args(doc: str, extra=()) -> argparse.Namespace:
    """--model, --size, --batch, --bf16 (shared with op_breakdown.py and host_malloc_bench.py),
    then `extra` (name, kwargs) options."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="medium")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="forward under CPU bf16 autocast")
    for name, kwargs in extra:
        parser.add_argument(name, **kwargs)
    return parser.parse_args()


def train_cfg(*overrides: str):
    """The composed train config (conf/train.yaml) with `overrides`."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def apply_cpu_speed_settings(*overrides: str) -> None:
    """The process-wide settings of conf/speed/cpu.yaml (e.g. freed heap memory kept), with
    `overrides` (`speed.cpu_kernels=false`, ...)."""
    from src.training.build import apply_speed_settings

    apply_speed_settings(train_cfg("trainer=cpu", *overrides).speed)


def build_net(model: str, size: int) -> torch.nn.Module:
    """The configured network of `model` for 1-channel size^3 cubes, channels_last_3d."""
    return instantiate(train_cfg(f"model={model}").model.net, in_channels=1, input_size=size,
                       n_params=3).to(memory_format=torch.channels_last_3d)


def make_train_step(model: str, size: int, batch: int, bf16: bool, fused_adam: bool | None = None):
    """One training step (forward, MSE, backward, Adam as conf/optim/adam.yaml configures it,
    `fused_adam` overriding its `fused`) of the configured `model` on a fixed random batch,
    channels_last_3d; returns it as a function of no arguments."""
    cl = torch.channels_last_3d
    net = build_net(model, size)
    x = torch.randn(batch, 1, size, size, size).contiguous(memory_format=cl)
    y = torch.rand(batch, 3) * 2 - 1
    optimizer = instantiate(train_cfg().optim)
    if fused_adam is not None:
        optimizer = partial(optimizer, fused=fused_adam)
    opt = optimizer(net.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        torch.nn.functional.mse_loss(out.float(), y).backward()
        opt.step()

    return step


def main() -> None:
    switch = {"action": argparse.BooleanOptionalAction, "default": True}
    args = step_args(__doc__, [("--rows", {"type": int, "default": 12}),
                               ("--fused-adam", {"action": argparse.BooleanOptionalAction,
                                                 "help": "default: conf/optim/adam.yaml"}),
                               ("--cpu-kernels", {**switch, "help": "speed.cpu_kernels"}),
                               ("--fast-depthwise", {**switch, "help": "speed.fast_depthwise"})])
    apply_cpu_speed_settings(f"speed.cpu_kernels={args.cpu_kernels}",
                             f"speed.fast_depthwise={args.fast_depthwise}")
    fused = train_cfg().optim.fused if args.fused_adam is None else args.fused_adam
    step = make_train_step(args.model, args.size, args.batch, args.bf16, fused)
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(f"model={args.model} {args.size}^3 batch {args.batch}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    adam_us = sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step#"))
    print(f"optimizer step ({'fused' if fused else 'per-tensor'} Adam): "
          f"{adam_us / 1e3:.1f} ms")


if __name__ == "__main__":
    main()
