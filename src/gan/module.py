"""CosmoGAN: the LightningModule that trains the conditional generator (docs/gan.md).

Loss: hinge (SNGAN, BigGAN) with spectral norm on the discriminator. Spectral norm keeps the
discriminator Lipschitz without a gradient penalty, so each step costs one backward per
network and no double backward (R1 would about double the cost of a 3D step on CPU). The
hinge loss stops pushing on samples already scored beyond the margin, which keeps the
discriminator from overconfident gradients that collapse small GANs.

The hinge loss alone lost at the tiny size on CPU: the discriminator won from the first
epoch and the generator collapsed to empty cubes (docs/benchmarks.md "GAN"). The generator
therefore also minimises two physics losses against the real cube at the same parameters
(src/gan/losses.py, weights `pk_weight` and `one_point_weight`), and cubes are sampled from a
moving average of its weights (`ema_decay`), as BigGAN and StyleGAN do.

Manual optimization: one discriminator step, then one generator step, per batch, each with
its own Adam (beta1 = 0 and beta2 = 0.9 as in SNGAN: momentum lags behind the opponent).
The batches are log1p(counts) cubes and parameters normalised to [-1, 1], as CosmoDataModule
serves them; `hparams` carries everything sample.py needs to rebuild the generator.

Dequantization (`dequantize`): simulated cubes hold integer particle counts, which a
discriminator tells from any continuous output at a glance. The GAN therefore learns
log1p(counts + u), u ~ U[0, 1) per voxel (as normalising flows do), and sample.py takes
floor(expm1(output)): integer counts again, with the same distribution as the data's.
"""

from __future__ import annotations

import copy
import math

import lightning as L
import torch
from torch import nn

from src.gan.losses import one_point_loss, spectrum_loss
from src.gan.nets import Discriminator, Generator


class CosmoGAN(L.LightningModule):
    def __init__(self, cube_size: int, channels: int, param_names: list, param_ranges: dict,
                 noise_dim: int = 64, width: int = 64, min_width: int = 8,
                 lr_g: float = 2e-4, lr_d: float = 2e-4, betas: tuple = (0.0, 0.9),
                 dequantize: bool = True, pk_weight: float = 0.0, one_point_weight: float = 0.0,
                 one_point_cells: tuple = (1,), ema_decay: float = 0.0, periodic: bool = True,
                 lr_schedule: str = "constant", d_smoothing: float = 0.0,
                 pk_pairing: str = "absolute", pixel_norm_from: int = 0, ema_ramp: float = 10.0,
                 modulate: bool = False,
                 train_data: str = "", description: str = "",
                 val_fraction: float | None = None, split_seed: int | None = None):
        super().__init__()
        # all of these land in the checkpoint: sample.py rebuilds the generator from them;
        # train_data and its split say which simulations it saw (src/gan/campaign.py)
        self.save_hyperparameters()
        self.automatic_optimization = False
        n_params = len(param_names)
        self.generator = Generator(cube_size, channels, noise_dim, width, min_width, n_params,
                                   periodic, pixel_norm_from, modulate)
        self.discriminator = Discriminator(cube_size, channels, width, min_width, n_params,
                                           periodic, d_smoothing)
        # the generator sample.py uses: a moving average of the trained one's weights
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)

    def forward(self, z: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return self.generator(z, params)

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.hparams.noise_dim, device=self.device)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.hparams.dequantize:  # log1p(n) -> log1p(n + u)
            x = torch.log1p(torch.expm1(x) + torch.rand_like(x))
        opt_g, opt_d = self.optimizers()
        self.schedule_lr(opt_g, opt_d)
        fake = self.generator(self.noise(x.shape[0]), y)

        # discriminator: real above +1, fake below -1 (hinge)
        d_real = self.discriminator(x, y)
        d_fake = self.discriminator(fake.detach(), y)
        loss_d = nn.functional.relu(1.0 - d_real).mean() + nn.functional.relu(1.0 + d_fake).mean()
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        opt_d.step()

        # generator: raise the score of its own cubes, and match the statistics of the real
        # cube made at the same parameters (src/gan/losses.py)
        loss_adv = -self.discriminator(fake, y).mean()
        loss_pk = spectrum_loss(fake, x, self.hparams.pk_pairing)
        loss_one = one_point_loss(fake, x, tuple(self.hparams.one_point_cells))
        loss_g = (loss_adv + self.hparams.pk_weight * loss_pk
                  + self.hparams.one_point_weight * loss_one)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        opt_g.step()
        self.update_ema()

        self.log_dict({"gan/loss_d": loss_d.detach(), "gan/loss_g": loss_adv.detach(),
                       "gan/loss_pk": loss_pk.detach(), "gan/loss_one_point": loss_one.detach(),
                       "gan/d_real": d_real.detach().mean(), "gan/d_fake": d_fake.detach().mean()},
                      prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])

    def lr_factor(self) -> float:
        """The learning rates' multiplier at this step: 1 (constant), or a cosine from 1 at
        the first step to 0 at the run's last (gan.epochs or gan.max_steps, whichever ends
        it first). A pure function of the step, so a resumed run continues the same curve."""
        if self.hparams.lr_schedule == "constant":
            return 1.0
        trainer = self.trainer
        ends = [trainer.max_steps] if trainer.max_steps > 0 else []
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            ends.append(2 * trainer.max_epochs * trainer.num_training_batches)
        if not ends:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, self.global_step / min(ends))))

    def schedule_lr(self, *optimizers) -> None:
        factor = self.lr_factor()
        for opt, base in zip(optimizers, (self.hparams.lr_g, self.hparams.lr_d), strict=True):
            for group in opt.param_groups:
                group["lr"] = float(base) * factor

    @torch.no_grad()
    def update_ema(self) -> None:
        """generator_ema <- d * generator_ema + (1 - d) * generator, d ramped up as
        (1 + t) / (r + t) (r = ema_ramp) towards ema_decay so that the first steps' weights fade
        out. At step t the average spans about (r + t) / (r - 1) steps: r = 2 weighs every step
        so far alike, a larger r forgets faster."""
        t = self.global_step // 2  # generator steps (two optimizer steps per batch)
        ramp = float(self.hparams.ema_ramp)
        decay = min(float(self.hparams.ema_decay), (1.0 + t) / (ramp + t))
        for ema, live in zip(self.generator_ema.parameters(), self.generator.parameters(),
                             strict=True):
            ema.lerp_(live, 1.0 - decay)

    def configure_optimizers(self):
        hp = self.hparams
        betas = tuple(float(b) for b in hp.betas)
        return (torch.optim.Adam(self.generator.parameters(), lr=hp.lr_g, betas=betas),
                torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr_d, betas=betas))


__all__ = ["CosmoGAN"]
