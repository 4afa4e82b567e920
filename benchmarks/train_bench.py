"""Training-path benchmark: our Lightning step vs a plain PyTorch loop, callback overhead, MFU.

    .venv/bin/python -m benchmarks.train_bench                       # small model, 64^3, batch 4
    .venv/bin/python -m benchmarks.train_bench --settings             # + the speed-settings matrix
    .venv/bin/python -m benchmarks.train_bench --model medium --size 32
    .venv/bin/python -m benchmarks.train_bench --override trainer.precision=32-true   # fp32 step
    python -m benchmarks.train_bench --trainer gpu --size 128 --batch 8   # on a GPU machine

Every variant runs once per repeat, interleaved (A B C, A B C, ...), and the medians are
compared, so slow drift of a noisy machine hits all variants alike. Printed ratios:
- `lightning_vs_plain`: samples/s of our full training step with the default settings of
  this device type (conf/speed, trainer preset, `trainer.precision: auto`) over a plain eager fp32 PyTorch loop of the
  same network, batch and input shape, with no Lightning (target on CPU: >= 2.0);
- `callback_overhead`: 1 - samples/s with the ThroughputMonitor / samples/s without it
  (target < 1 %; an A/B of two noisy runs, so only resolved down to their spread);
- `monitor_overhead_frac`: the monitor's own measurement of the time inside its per-batch
  hooks over the window time (direct, not limited by run-to-run noise);
- `mfu` and `data_wait_frac`: what the ThroughputMonitor reports for the default run.
Samples/s of the Lightning variants is timed by a separate minimal callback, the same for all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from src.sim.synthetic import write_synthetic_dataset
from src.training.build import (
    apply_malloc_setting,
    apply_speed_settings,
    build_callbacks,
    build_datamodule,
    build_module,
    resolve_precision,
)

ROOT = Path(__file__).resolve().parents[1]


class StepTimer(L.Callback):
    """Wall time of the training batches after `warmup` (the same clock for every variant)."""

    def __init__(self, warmup: int):
        self.warmup, self.step, self.t0, self.t1, self.samples = warmup, 0, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.step == self.warmup:
            sync(pl_module.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.step += 1
        if self.step > self.warmup:
            self.samples += len(batch[0])
            if pl_module.device.type == "cpu":  # on GPU: once, at the end (no sync per step)
                self.t1 = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        if pl_module.device.type != "cpu":
            sync(pl_module.device)
            self.t1 = time.perf_counter()

    @property
    def samples_per_s(self) -> float:
        return self.samples / (self.t1 - self.t0)


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def lightning_run(args, data_dir, out_dir, with_monitor: bool, extra=()) -> dict:
    steps = args.warmup + args.steps
    overrides = [
        f"trainer={args.trainer}", f"model={args.model}", f"data.dir={data_dir}",
        f"data.batch_size={args.batch}",
        "logger=none", "trainer.max_epochs=100", f"trainer.max_steps={steps}",
        "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "~callbacks.progress",
        "~callbacks.checkpoint", "trainer.enable_checkpointing=false", *args.override, *extra,
    ]
    if with_monitor:
        overrides += [f"callbacks.throughput.warmup_steps={args.warmup}",
                      f"callbacks.throughput.window_steps={args.steps}"]
    else:
        overrides.append("~callbacks.throughput")
    cfg = compose_train(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    resolve_precision(cfg)
    apply_speed_settings(cfg.get("speed"))
    L.seed_everything(0, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    timer = StepTimer(args.warmup)
    callbacks = [*build_callbacks(cfg), timer]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False, default_root_dir=str(out_dir))
    trainer.fit(module, datamodule=dm)
    monitor = next((cb.metrics for cb in callbacks if getattr(cb, "metrics", None)), {})
    return {"samples_per_s": timer.samples_per_s, **{k: monitor.get(k) for k in ("mfu", "data_wait_frac", "loop_gap_frac", "monitor_overhead_frac", "tflops_per_device", "peak_flops_per_device", "peak_flops_source", "peak_flops_dtype")}}


def plain_loop(args, channels, n_params, channels_last=False, autocast=None, compile_net=False) -> float:
    """A plain PyTorch training loop: no Lightning, no data loader, tensors already in memory."""
    cfg = compose_train([f"model={args.model}"])
    torch.manual_seed(0)
    device = torch.device("cuda" if args.trainer == "gpu" else "cpu")
    net = instantiate(cfg.model.net, in_channels=channels, input_size=args.size, n_params=n_params)
    net = net.to(device)
    x = torch.randn(args.batch, channels, args.size, args.size, args.size, device=device)
    y = torch.rand(args.batch, n_params, device=device) * 2 - 1
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    step_net = torch.compile(net) if compile_net else net
    t0 = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = torch.nn.functional.mse_loss(step_net(x).float(), y)
        loss.backward()
        opt.step()
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer", default="cpu", choices=["cpu", "gpu"],
                        help="trainer preset (and its conf/speed defaults); gpu: one CUDA device")
    parser.add_argument("--model", default="small")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", action="store_true", help="also time the speed-settings matrix")
    parser.add_argument("--json", type=Path, help="write the medians here")
    parser.add_argument("--override", nargs="*", default=[],
                        help="Hydra overrides for every Lightning variant (e.g. trainer.precision=32-true)")
    return parser.parse_args()


def variants_of(args, tmp: Path, channels: int, n_params: int) -> dict:
    """name -> a run of that variant returning its figures (samples/s at least)."""
    variants = {
        "plain_fp32": lambda: {"samples_per_s": plain_loop(args, channels, n_params)},
        "lightning_default": lambda: lightning_run(args, tmp / "data", tmp / "a", True),
        "lightning_no_monitor": lambda: lightning_run(args, tmp / "data", tmp / "b", False),
    }
    if args.settings:
        variants.update({
            "plain_fp32_channels_last": lambda: {"samples_per_s": plain_loop(args, channels, n_params, True)},
            "plain_bf16_channels_last": lambda: {"samples_per_s": plain_loop(args, channels, n_params, True, torch.bfloat16)},
            "plain_bf16": lambda: {"samples_per_s": plain_loop(args, channels, n_params, False, torch.bfloat16)},
            "plain_compile_fp32_channels_last": lambda: {"samples_per_s": plain_loop(args, channels, n_params, True, None, True)},
            "lightning_fp32": lambda: lightning_run(args, tmp / "data", tmp / "c", False, ["trainer.precision=32-true"]),
            "lightning_bf16": lambda: lightning_run(args, tmp / "data", tmp / "d", False, ["trainer.precision=bf16-mixed"]),
        })
    return variants


def summarise(args, results: dict[str, list[dict]]) -> dict:
    """Medians over the repeats, the printed ratios and the setup they were measured in."""

    def med(name, key="samples_per_s"):
        vals = [r[key] for r in results[name] if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    summary = {name: med(name) for name in results}
    summary["lightning_vs_plain"] = med("lightning_default") / med("plain_fp32")
    summary["callback_overhead"] = 1 - med("lightning_default") / med("lightning_no_monitor")
    for key in ("mfu", "data_wait_frac", "loop_gap_frac", "monitor_overhead_frac", "tflops_per_device",
                "peak_flops_per_device"):
        summary[key] = med("lightning_default", key)
    for key in ("peak_flops_source", "peak_flops_dtype"):
        summary[key] = results["lightning_default"][-1].get(key)
    summary["setup"] = {"trainer": args.trainer, "model": args.model, "size": args.size, "batch": args.batch, "steps": args.steps,
                        "warmup": args.warmup, "repeats": args.repeats, "override": args.override,
                        "torch": torch.__version__,
                        "threads": torch.get_num_threads()}
    return summary


def main() -> None:
    args = parse_args()
    # process-wide and not undone between variants: the plain loop runs with it too
    apply_malloc_setting(compose_train([f"trainer={args.trainer}", *args.override]).get("speed"))
    tmp = Path(tempfile.mkdtemp(prefix="train_bench_"))
    n_sims = max(2, -(-(args.warmup + args.steps) * args.batch // 6) + 2)  # enough for one epoch
    write_synthetic_dataset(tmp / "data", n_sims=n_sims, size=args.size, seed=0)
    variants = variants_of(args, tmp, channels=1, n_params=3)
    results: dict[str, list[dict]] = {k: [] for k in variants}
    for rep in range(args.repeats):
        for name, fn in variants.items():
            results[name].append(fn())
            print(f"repeat {rep} {name}: {results[name][-1]['samples_per_s']:.2f} samples/s", flush=True)
    summary = summarise(args, results)
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
