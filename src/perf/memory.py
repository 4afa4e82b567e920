"""Memory footprint of training: weights, gradients, optimizer state, activations.

Activations on CPU (and as a cross-check on GPU) are estimated from the tensors autograd
saves for the backward pass, captured with `saved_tensors_hooks` on a meta copy of the net:
that is what a training step must keep alive between forward and backward, without running
any arithmetic. Storages are de-duplicated (views share one), parameters are excluded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from src.perf.flops import _input, _run_on_copy


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def weights_bytes(net: nn.Module) -> int:
    """Parameters plus buffers (e.g. batch-norm running stats)."""
    return sum(_tensor_bytes(p) for p in net.parameters()) + sum(
        _tensor_bytes(b) for b in net.buffers()
    )


def gradients_bytes(net: nn.Module) -> int:
    """One gradient per trainable parameter, in the parameter's dtype."""
    return sum(_tensor_bytes(p) for p in net.parameters() if p.requires_grad)


def optimizer_bytes(optimizers: Iterable[torch.optim.Optimizer]) -> int:
    """Every tensor the optimizers hold in their state (Adam: exp_avg, exp_avg_sq, step)."""
    total = 0
    for opt in optimizers:
        for state in opt.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    total += _tensor_bytes(v)
    return total


def saved_activation_bytes(net: nn.Module, input_shape: Sequence[int], batch_size: int,
                           dtype: torch.dtype | None = None) -> int:
    """Bytes autograd saves for backward in one training forward of `batch_size` samples
    (compute `dtype`, default the parameters' dtype)."""

    def estimate(model, device):
        dt = dtype or next((p.dtype for p in model.parameters() if p.is_floating_point()),
                           torch.float32)
        model = model.to(dt).train()
        param_storages = {p.untyped_storage()._cdata for p in model.parameters()}
        seen: dict[int, int] = {}
        keep: list[torch.Tensor] = []  # hold storages so their addresses are not reused

        def pack(t: torch.Tensor):
            s = t.untyped_storage()
            if s._cdata not in param_storages:
                seen[s._cdata] = s.nbytes()
                keep.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(_input(input_shape, batch_size, device, dt))
        return sum(seen.values())

    return _run_on_copy(net, estimate)
