"""The architect: updates the architecture weights on validation data (DARTS bilevel step).

first order (default):  grad_alpha L_val(w, alpha)
second order (option):  grad_alpha L_val(w', alpha) - xi * H * grad_w' L_val(w', alpha),
    w' = w - xi * (momentum_buffer * mu + grad_w L_train(w, alpha) + wd * w)
    (the virtual SGD step; xi multiplies the WHOLE bracket), and the Hessian-vector product
    H v = [grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)] / (2 eps),
    w+- = w +- eps v, eps = r / ||v||, r = `fd_radius` (search.fd_radius, 0.01 as in DARTS).
The virtual weights live only in `torch.func.functional_call`, so the look-ahead never touches
the real model's weights.

Batch-norm running statistics: every forward of the architect, in both modes (the first-order
val pass, the virtual step's train pass, the look-ahead and finite-difference passes), runs
through `functional_call` with copies of the model's buffers, so an architect step leaves the
running statistics exactly as it found them. Only the weight steps on the train half move them,
so they describe the data the weights learn on. (DARTS's reference code let the architect's
passes update them too; nothing in the search reads them -- the supernet is only run in train
mode, where BatchNorm normalises with batch statistics -- so this changes no gradient.)

The model must offer `arch_parameters()` and `named_network_parameters()`; its loss is the MSE
of its output (as `SearchNetwork.loss`).
"""

from __future__ import annotations

import torch
from torch.func import functional_call


class Architect:
    def __init__(self, model, lr: float = 3e-4, betas=(0.5, 0.999), weight_decay: float = 1e-3,
                 second_order: bool = False, w_momentum: float = 0.9,
                 w_weight_decay: float = 3e-4, fd_radius: float = 0.01):
        self.model = model
        self.second_order = second_order
        self.w_momentum, self.w_weight_decay, self.fd_radius = w_momentum, w_weight_decay, fd_radius
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr, betas=tuple(betas),
                                          weight_decay=weight_decay)

    def step(self, train_batch, val_batch, xi: float | None = None, w_optimizer=None) -> float:
        """One update of the alphas; returns the validation loss before the update.

        `xi` is the virtual step size (the weights' current learning rate) and `w_optimizer`
        supplies the momentum buffers; both only matter for the second-order step.
        """
        self.optimizer.zero_grad(set_to_none=True)
        if self.second_order:
            if xi is None:
                raise ValueError("second-order architect step needs xi (the weights' lr)")
            loss, grads = self._unrolled_grads(train_batch, val_batch, xi, w_optimizer)
        else:
            loss = self._call_loss({}, val_batch)  # the model's own parameters, copied buffers
            # autograd.grad, not backward(): the network weights' .grad must stay untouched
            alphas = self.model.arch_parameters()
            grads = torch.autograd.grad(loss, alphas, allow_unused=True)
            # an all-reduction (or all-normal) stack leaves one alpha set unused
            grads = [g if g is not None else torch.zeros_like(a) for g, a in zip(grads, alphas, strict=True)]
        for p, g in zip(self.model.arch_parameters(), grads, strict=True):
            p.grad = g.detach()
        self.optimizer.step()
        return float(loss.detach())

    # --- second order ---------------------------------------------------------------
    def _call_loss(self, params: dict, batch) -> torch.Tensor:
        """The loss with `params` in place of the model's own (those not named stay), on copies
        of the buffers so that batch norm's running statistics are not updated."""
        x, y = batch
        # fresh buffer copies so the look-ahead passes do not update the running statistics
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        out = functional_call(self.model, {**params, **buffers}, (x,))
        return torch.nn.functional.mse_loss(out, y)

    def _unrolled_grads(self, train_batch, val_batch, xi, w_optimizer):
        model = self.model
        named_w = list(model.named_network_parameters())
        names = [n for n, _ in named_w]
        w = [p for _, p in named_w]
        alphas = model.arch_parameters()
        arch_names = [n for n, p in model.named_parameters() if n.startswith("arch.")]
        arch = dict(zip(arch_names, alphas, strict=True))

        # virtual step w' = w - xi * (mu * m + dL_train/dw + wd * w)
        dw = torch.autograd.grad(self._call_loss({}, train_batch), w, allow_unused=True)
        w_virtual = []
        for p, g in zip(w, dw, strict=True):
            step = (g if g is not None else torch.zeros_like(p)) + self.w_weight_decay * p.detach()
            if w_optimizer is not None:
                buf = w_optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    step = step + self.w_momentum * buf
            w_virtual.append((p.detach() - xi * step).requires_grad_(True))

        val_loss = self._call_loss({**dict(zip(names, w_virtual, strict=True)), **arch}, val_batch)
        grads = torch.autograd.grad(val_loss, list(alphas) + w_virtual, allow_unused=True)
        d_alpha = [g if g is not None else torch.zeros_like(a) for g, a in zip(grads[:len(alphas)], alphas, strict=True)]
        v = [g if g is not None else torch.zeros_like(p)
             for g, p in zip(grads[len(alphas):], w_virtual, strict=True)]

        hvp = self._hessian_vector_product(names, w, v, arch, train_batch)
        return val_loss, [da - xi * h for da, h in zip(d_alpha, hvp, strict=True)]

    def _hessian_vector_product(self, names, w, v, arch, batch):
        norm = torch.sqrt(sum((t * t).sum() for t in v))
        eps = self.fd_radius / (float(norm) + 1e-12)
        alphas = list(arch.values())
        out = []
        for sign in (1.0, -1.0):
            shifted = {n: p.detach() + sign * eps * t for n, p, t in zip(names, w, v, strict=True)}
            loss = self._call_loss({**shifted, **arch}, batch)
            out.append(torch.autograd.grad(loss, alphas, allow_unused=True))
        return [
            ((gp if gp is not None else torch.zeros_like(a))
             - (gn if gn is not None else torch.zeros_like(a))) / (2 * eps)
            for gp, gn, a in zip(out[0], out[1], alphas, strict=True)
        ]
