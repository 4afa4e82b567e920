"""One source of truth for the cost of a network.

Conventions (see docs/perf.md):
- MACs are multiply-accumulates of ONE sample's forward pass, counted by thop on a copy of the
  network (a meta-device copy when the forward allows it, so no weights are copied and no
  arithmetic runs: a 16-TFLOP model counts in milliseconds). Conv MACs are
  `out_elements * C_in/groups * prod(kernel)` (padded positions count, bias does not);
  Linear MACs are `out_features * in_features`.
- `flops_per_sample_forward = 2 * MACs`.
- `flops_per_sample_train = 3 * flops_per_sample_forward` -- the paper's Eq. 1: the backward
  pass costs two forwards (gradient w.r.t. the input and w.r.t. the weights).
- `flops_per_sample_measured` is what `torch.utils.flop_counter` sees in one real forward +
  backward (matmuls and convolutions only). It is a little below Eq. 1 because the first
  layer needs no input gradient. torch's formula counts the weight gradient of a grouped
  convolution `groups` times too high; `_conv_backward_flop` corrects it.
"""

from __future__ import annotations

import copy
import itertools
import logging
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils import flop_counter

log = logging.getLogger(__name__)

aten = torch.ops.aten

def _thop_profile():
    # thop imports distutils at module level; keep its deprecation noise out of our logs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from thop import profile
    return profile


def meta_copy(net: nn.Module) -> nn.Module:
    """A deep copy of `net` whose parameters and buffers live on the meta device.

    The memo hands deepcopy a meta tensor for every parameter/buffer, so no weight data is
    ever copied (a multi-GB model copies in milliseconds).
    """
    memo: dict[int, object] = {}
    for t in itertools.chain(net.parameters(), net.buffers()):
        meta = torch.empty_like(t, device="meta")
        if isinstance(t, nn.Parameter):
            meta = nn.Parameter(meta, requires_grad=t.requires_grad)
        memo[id(t)] = meta
    return copy.deepcopy(net, memo)


def _cpu_copy(net: nn.Module) -> nn.Module:
    # Fallback for forwards the meta device cannot run (data-dependent control flow, .item()).
    return copy.deepcopy(net).to("cpu")


def _dtype_of(net: nn.Module) -> torch.dtype:
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _copies(net: nn.Module):
    """Yield (model copy, device) candidates: meta first, then a CPU copy."""
    try:
        yield meta_copy(net), torch.device("meta")
    except Exception as err:  # deepcopy refused; a CPU copy would too
        log.debug("meta copy failed: %s", err)
    yield _cpu_copy(net), torch.device("cpu")


def _run_on_copy(net: nn.Module, fn):
    """Run `fn(model_copy, device)` on a meta copy, falling back to a CPU copy."""
    net = getattr(net, "_orig_mod", net)  # torch.compile wrapper: count the eager module
    last_err: Exception | None = None
    for model, device in _copies(net):
        try:
            return fn(model, device)
        except Exception as err:
            if device.type != "meta":
                raise
            last_err = err
            # slow for a big model (real arithmetic), so say so
            log.warning("meta-device counting failed (%s); counting on a CPU copy", err)
    raise RuntimeError("FLOP counting failed") from last_err


def _input(input_shape: Sequence[int], batch: int, device, dtype) -> torch.Tensor:
    shape = (batch, *tuple(int(s) for s in input_shape))
    if device.type == "meta":
        return torch.empty(shape, device=device, dtype=dtype)
    return torch.zeros(shape, device=device, dtype=dtype)


def forward_macs(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward multiply-adds for ONE sample of shape `input_shape = (C, d, d, d)` (thop)."""
    profile = _thop_profile()

    def count(model, device):
        x = _input(input_shape, 1, device, _dtype_of(model))
        macs, _params = profile(model, inputs=(x,), verbose=False)
        return int(round(float(macs)))

    return _run_on_copy(net, count)


def flops_per_sample(net: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """`flops_per_sample_forward` (2 x MACs) and `flops_per_sample_train` (Eq. 1: 3 x forward)."""
    forward = 2 * forward_macs(net, input_shape)
    return {"flops_per_sample_forward": forward, "flops_per_sample_train": 3 * forward}


def _conv_backward_flop(*args, out_shape=None, **kwargs) -> int:
    """torch's convolution_backward formula with the grouped weight-gradient term fixed.

    torch counts grad_weight as a dense conv over all C_in x C_out channel pairs; a grouped
    conv only pairs C_in/groups of them with each output channel, so that term is `groups`
    times too high. We recompute it with torch's own formula (mask = weight only) and
    replace it by its 1/groups share.
    """
    torch_formula = flop_counter.flop_registry[aten.convolution_backward]
    total = torch_formula(*args, out_val=out_shape, **kwargs)
    names = ("grad_out", "x", "w", "bias", "stride", "padding", "dilation", "transposed",
             "output_padding", "groups", "output_mask")
    bound = dict(zip(names, args, strict=False))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    groups, mask = int(bound.get("groups", 1)), list(bound.get("output_mask", [True] * 3))
    if groups > 1 and mask[1]:
        wargs = [bound[n] for n in names[:-1]] + [[False, True, False]]
        wterm = torch_formula(*wargs, out_val=out_shape)
        total = total - wterm + wterm // groups
    return total


def measured_train_flops(net: nn.Module, input_shape: Sequence[int], batch_size: int = 2) -> int:
    """FLOPs per sample of one forward + backward, seen by torch.utils.flop_counter.

    Runs a meta copy in train mode (batch of `batch_size`, so batch-norm accepts it) and
    divides by the batch; the loss is a plain sum so it adds no counted FLOPs.
    """

    def count(model, device):
        model.train()
        x = _input(input_shape, batch_size, device, _dtype_of(model))
        mode = flop_counter.FlopCounterMode(
            display=False, custom_mapping={aten.convolution_backward: _conv_backward_flop}
        )
        with mode:
            out = model(x)
            out.float().sum().backward()
        return int(mode.get_total_flops()) // batch_size

    return _run_on_copy(net, count)


def _nbytes(t) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    if isinstance(t, (tuple, list)):
        return sum(_nbytes(u) for u in t)
    return 0


def layer_traffic(
    net: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
    dtype: torch.dtype | None = None,
) -> list[dict]:
    """Per leaf module of one forward at `batch_size`: FLOPs (2 x MACs of convs/linears) and
    the minimum bytes it must move (read its input and parameters once, write its output once)
    in `dtype` (default: the parameters' dtype)."""

    def collect(model, device):
        dt = dtype or _dtype_of(model)
        model = model.to(dt).eval()
        rows: list[dict] = []

        def hook(mod, inp, out):
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            elem = torch.empty((), dtype=dt).element_size()
            flops = 0
            if isinstance(mod, nn.modules.conv._ConvNd):
                k = 1
                for s in mod.kernel_size:
                    k *= s
                flops = 2 * out.numel() * (mod.in_channels // mod.groups) * k
            elif isinstance(mod, nn.Linear):
                flops = 2 * out.numel() * mod.in_features
            rows.append({"name": names[mod], "type": type(mod).__name__, "flops": flops,
                         "bytes": _nbytes(inp) + _nbytes(out) + params * elem})

        names = {m: n for n, m in model.named_modules()}
        handles = [m.register_forward_hook(hook) for m in model.modules()
                   if not list(m.children())]
        try:
            with torch.no_grad():
                model(_input(input_shape, batch_size, device, dt))
        finally:
            for h in handles:
                h.remove()
        return rows

    return _run_on_copy(net, collect)


def arithmetic_intensity(
    net: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
    dtype: torch.dtype | None = None,
) -> float:
    """Analytic arithmetic intensity (FLOP/byte) of the forward pass at `batch_size`: total
    conv/linear FLOPs / the minimum bytes every leaf layer moves (`layer_traffic`). The
    backward pass has about the same ratio (2x the FLOPs over ~2x the traffic)."""
    rows = layer_traffic(net, input_shape, batch_size, dtype)
    moved = sum(r["bytes"] for r in rows)
    return sum(r["flops"] for r in rows) / moved if moved else 0.0
