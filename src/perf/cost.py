"""What a training run costs, counted once per run from its first batch (docs/perf.md).

FLOPs per sample (Eq. 1 and measured), arithmetic intensity, and the memory of weights,
gradients, optimizer state and activations, under the metric names of src/contract.py. A
cost that cannot be counted is logged and left out: it must never stop training.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from src.perf import flops as perf_flops
from src.perf import memory as perf_memory
from src.perf.peak import PEAK_DTYPES

log = logging.getLogger(__name__)


def batch_input(batch) -> torch.Tensor | None:
    """The input tensor of a batch: (x, y), {"x": ...} or a bare tensor."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("x", "input", "inputs"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    return None


def static_cost(net: nn.Module, x: torch.Tensor | None, dtype: str,
                measure_flops: bool = True) -> dict:
    """FLOPs, arithmetic intensity and weight/gradient/activation bytes of training `net` on
    batches shaped like `x`, computing in `dtype` (a src.perf.peak dtype key)."""
    if x is None or x.dim() < 2:
        log.warning("ThroughputMonitor: cannot read the input shape from the batch")
        return {}
    shape = tuple(int(s) for s in x.shape[1:])
    bs = int(x.shape[0])
    dt = PEAK_DTYPES.get(dtype)  # the dtype the step computes in
    s: dict[str, float | int] = {}
    try:
        s.update(perf_flops.flops_per_sample(net, shape))
        if measure_flops:
            s["flops_per_sample_measured"] = perf_flops.measured_train_flops(net, shape)
        s["arithmetic_intensity"] = perf_flops.arithmetic_intensity(net, shape, bs, dt)
    except Exception as err:  # a cost we cannot count must not stop training
        log.warning("ThroughputMonitor: FLOP counting failed: %s", err)
    s["mem_weights_bytes"] = perf_memory.weights_bytes(net)
    s["mem_gradients_bytes"] = perf_memory.gradients_bytes(net)
    try:
        s["mem_activations_estimate_bytes"] = perf_memory.saved_activation_bytes(
            net, shape, bs, dt)
    except Exception as err:
        log.warning("ThroughputMonitor: activation estimate failed: %s", err)
    return s


def run_memory(static: dict, optimizers, device: torch.device) -> tuple[int, float | None, str]:
    """(optimizer state bytes, this rank's activation bytes or None, their source).

    On GPU the activations are the peak allocation since the warm-up ended minus weights,
    gradients and optimizer state; elsewhere the saved-tensor estimate of `static_cost`."""
    opt_bytes = perf_memory.optimizer_bytes(optimizers)
    if device.type == "cuda":
        held = static.get("mem_weights_bytes", 0) + static.get("mem_gradients_bytes", 0) + opt_bytes
        return opt_bytes, max(torch.cuda.max_memory_allocated(device) - held, 0), "cuda_max_allocated"
    return opt_bytes, static.get("mem_activations_estimate_bytes"), "saved_tensors"
