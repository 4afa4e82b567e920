"""LARS/LARC layer-wise trust ratio on top of Adam (the paper's "Adam + LARS").

Adam already normalises gradient scale, so scaling gradients (plain LARS) would barely change
its step. We apply the trust ratio to the *update* instead, as LAMB does: after the base step,
each weight tensor's change dw is scaled by

    ratio = min(1, trust_coefficient * ||w|| / (||dw|| + eps))      (LARC "clip" mode)

so no layer moves by more than `trust_coefficient` of its own norm in one step. Biases and
normalisation parameters (1-D tensors) are left alone, as in You et al. (2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def lars_targets(params) -> list[torch.nn.Parameter]:
    """The tensors the trust ratio applies to: weights (>= 2-D) that train."""
    return [p for p in params if p.requires_grad and p.ndim >= 2]


@torch.no_grad()
def clip_relative_update_(
    params: Sequence[torch.nn.Parameter],
    before: Sequence[torch.Tensor],
    trust_coefficient: float,
    eps: float = 1e-8,
) -> list[float]:
    """Scale each update `p - before` in place by its trust ratio; returns the ratios."""
    ratios = []
    for p, w0 in zip(params, before, strict=True):
        delta = p - w0
        d_norm = torch.linalg.vector_norm(delta.float())
        w_norm = torch.linalg.vector_norm(w0.float())
        if d_norm == 0 or w_norm == 0:
            ratios.append(1.0)
            continue
        ratio = torch.clamp(trust_coefficient * w_norm / (d_norm + eps), max=1.0)
        p.copy_(w0 + delta * ratio.to(delta.dtype))
        ratios.append(float(ratio))
    return ratios
