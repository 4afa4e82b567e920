"""The GAN generator's training pieces: its physics losses, seeded noise, moving average and
padding (src/gan/losses.py, nets.py, module.py, train_gan.py)."""

from __future__ import annotations

import math

import pytest
import torch

from src.gan.losses import one_point_loss, shell_power, spectrum_loss
from src.gan.nets import Discriminator, GanConfigError, Generator, smoothed_contrast
from src.gan.physics import _contrast, _smooth
from src.gan.train_gan import _resumable, build_gan, resolve_periodic
from src.sim.mesh import power_spectrum


def counts(seed: int, size: int = 16, rate: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full((2, 1, size, size, size), rate), generator=g)


def test_shell_power_is_the_simulations_power_spectrum_per_volume():
    cube = counts(0)[0, 0]
    box = 64.0
    _, p, _ = power_spectrum(cube / cube.mean() - 1.0, box)
    mine = shell_power(cube[None])[0].double() * box**3
    assert torch.allclose(mine, p.to(mine.dtype), rtol=1e-4)


def test_losses_vanish_for_a_symmetric_copy_and_not_for_another_cube():
    real = torch.log1p(counts(1))
    mirrored = torch.flip(real, dims=(2, 4)).permute(0, 1, 3, 2, 4)  # same |k| shells, same voxels
    assert spectrum_loss(mirrored, real) < 1e-8
    assert one_point_loss(mirrored, real) < 1e-12
    denser = torch.log1p(counts(2, rate=3.0))
    assert one_point_loss(denser, real) > 0.1
    assert spectrum_loss(torch.log1p(counts(3)), real) > 1e-3


@pytest.mark.parametrize("loss", [spectrum_loss, one_point_loss])
def test_descending_a_loss_moves_a_cube_to_the_target_statistic(loss):
    """A free, nearly flat cube pulled by one loss alone reaches its target's P(k) (or
    one-point distribution): the gradient points the right way, which the generator needs."""
    torch.manual_seed(0)
    real = torch.log1p(counts(4, rate=0.5))
    fake = torch.full_like(real, 0.5).add_(0.01 * torch.randn_like(real)).requires_grad_(True)
    opt = torch.optim.Adam([fake], lr=0.02)
    start = loss(fake, real).item()
    for _ in range(200):
        opt.zero_grad()
        loss(fake, real).backward()
        opt.step()
    assert loss(fake, real).item() < 0.01 * start


def test_a_seed_makes_the_same_cube_whatever_else_is_in_the_batch():
    net = Generator(16, noise_dim=4, width=8, min_width=4).eval()
    with torch.no_grad():
        for block in net.blocks:  # noise weights start at 0: make the fields count
            block.noise_weight.fill_(0.5)
        y = torch.zeros(3, 3)

        def make(seeds):
            draws = [net.draw_noise(1, torch.Generator().manual_seed(s)) for s in seeds]
            z = torch.cat([d[0] for d in draws])
            fields = [torch.cat([d[1][j] for d in draws]) for j in range(len(draws[0][1]))]
            return net(z, y[:len(seeds)], fields)

        alone, batch = make([7]), make([5, 7, 9])
        assert torch.allclose(alone[0], batch[1], atol=1e-6)
        assert not torch.allclose(batch[0], batch[1])
        z, fields = net.draw_noise(1, torch.Generator().manual_seed(7))
        fields[-1] = -fields[-1]  # same noise vector, another voxel-scale field
        assert not torch.allclose(net(z, y[:1], fields), alone)


def test_counts_in_cells_see_the_arrangement_the_voxels_alone_do_not():
    """Clustered and scattered cubes with the same voxel values: the single-voxel term cannot
    tell them apart; the cells' term can, and vanishes for a symmetric copy."""
    g = torch.Generator().manual_seed(5)
    clustered = torch.zeros(1, 1, 8, 8, 8)
    clustered[..., :4, :4, :4] = torch.poisson(torch.full((4, 4, 4), 4.0), generator=g)
    order = torch.randperm(8**3, generator=g)
    scattered = clustered.flatten()[order].view_as(clustered)
    real, fake = torch.log1p(clustered), torch.log1p(scattered)
    assert one_point_loss(fake, real, (1,)) < 1e-12
    assert one_point_loss(fake, real, (1, 2, 4)) > 0.05
    assert one_point_loss(torch.flip(real, dims=(2, 3)), real, (1, 2, 4)) < 1e-12


@pytest.mark.parametrize("key, value", [("pk_weight", -1.0), ("one_point_weight", "heavy"),
                                        ("one_point_cells", [1, 3]), ("one_point_cells", [0]),
                                        ("one_point_cells", 2), ("one_point_cells", []),
                                        ("lr_schedule", "linear"), ("d_smoothing", -1.0),
                                        ("d_smoothing", "wide"), ("pk_pairing", "paired"),
                                        ("pixel_norm_from", -1), ("pixel_norm_from", 1.5),
                                        ("pixel_norm_from", 3), ("ema_ramp", 1.5),
                                        ("modulate", "yes")])
def test_a_bad_loss_weight_is_one_error_naming_it(key, value):
    class Shapes:  # the data module's attributes build_gan reads
        sample_shape, param_names = (1, 16, 16, 16), ["Omega_M", "sigma_8", "n_s"]
        param_ranges = {"Omega_M": [0.25, 0.35], "sigma_8": [0.78, 0.95], "n_s": [0.9, 1.0]}
        data_dir = "sims"

    gcfg = {"noise_dim": 4, "width": 8, "min_width": 4, "lr_g": 1e-4, "lr_d": 1e-4,
            "betas": [0.0, 0.9], "dequantize": True, "pk_weight": 1.0, "one_point_weight": 1.0,
            "one_point_cells": [1], "val_fraction": 0.25, "split_seed": 0, "periodic": True,
            key: value}
    with pytest.raises(GanConfigError, match=f"gan.{key}"):
        build_gan(gcfg, Shapes(), "test")


def test_relative_pairing_leaves_the_power_level_to_the_batch_means():
    """Every fake cube with half its twin's contrast (a quarter of its power in every shell):
    absolute pairing counts the level twice (per cube and batch means), relative once; both
    vanish for a symmetric copy, and an unknown pairing is refused."""
    real_counts = counts(8, rate=2.0)
    mean = real_counts.mean(dim=(2, 3, 4), keepdim=True)
    half = torch.log1p(mean * (1.0 + 0.5 * (real_counts / mean - 1.0)))
    real = torch.log1p(real_counts)
    level = (2 * math.log(0.5)) ** 2
    assert spectrum_loss(half, real, "absolute").item() == pytest.approx(2 * level, rel=1e-4)
    assert spectrum_loss(half, real, "relative").item() == pytest.approx(level, rel=1e-4)
    mirrored = torch.flip(real, dims=(2, 4)).permute(0, 1, 3, 2, 4)
    assert spectrum_loss(mirrored, real, "relative") < 1e-8
    with pytest.raises(ValueError, match="pairing"):
        spectrum_loss(half, real, "median")


def test_the_discriminators_smoothed_view_is_the_peak_checks_field():
    """smoothed_contrast equals the validation's smoothing of the contrast (an independent
    numpy FFT) in units of its own spread, is differentiable, and shows a clump of a few
    particles high above the same particles scattered, where the raw voxels look alike."""
    cube = counts(6, size=16, rate=1.0)
    mine = smoothed_contrast(torch.log1p(cube), 1.0)[:, 0].double().numpy()
    ref = _smooth(_contrast(cube[:, 0].double().numpy()), 1.0)
    ref = ref / ref.std(axis=(1, 2, 3), keepdims=True)
    assert abs(mine - ref).max() < 1e-4
    assert abs(mine.std(axis=(1, 2, 3)) - 1).max() < 1e-4

    clump = torch.zeros(1, 1, 16, 16, 16)
    clump[..., 4:6, 4:6, 4:6] = 1.0  # 8 particles side by side
    scattered = torch.zeros_like(clump)
    scattered.view(-1)[torch.arange(8) * 509] = 1.0  # the same 8, far apart
    x = torch.log1p(torch.cat([clump, scattered])).requires_grad_(True)
    nu = smoothed_contrast(x, 1.0)
    assert nu[0].max() > 1.5 * nu[1].max()  # in units of each cube's own spread
    nu[0].max().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_a_smoothing_discriminator_reads_both_views():
    torch.manual_seed(0)
    plain, smoothing = Discriminator(16, 1, 8, 4), Discriminator(16, 1, 8, 4, smoothing=1.0)
    assert plain.features[0].in_channels == 1 and smoothing.features[0].in_channels == 2
    x, y = torch.log1p(counts(7)), torch.zeros(2, 3)
    assert smoothing(x, y).shape == (2,)


def test_resuming_with_a_mapping_that_omits_an_opt_in_key_takes_its_default(tmp_path):
    """A hand-built gan.* mapping without the opt-in keys resumes a checkpoint trained at
    their defaults, and is refused, naming the key, by one trained otherwise."""
    from src.gan.module import CosmoGAN

    ranges = {"Omega_M": [0.25, 0.35], "sigma_8": [0.78, 0.95], "n_s": [0.9, 1.0]}
    gcfg = {"noise_dim": 4, "width": 8, "min_width": 4, "lr_g": 1e-4, "lr_d": 1e-4,
            "betas": [0.0, 0.9], "dequantize": True, "pk_weight": 1.0, "one_point_weight": 1.0,
            "val_fraction": 0.25, "split_seed": 0, "periodic": True}
    for smoothing in (0.0, 2.0):
        module = CosmoGAN(cube_size=8, channels=1, param_names=list(ranges),
                          param_ranges=ranges, **{k: v for k, v in gcfg.items()},
                          d_smoothing=smoothing, train_data=str(tmp_path))
        ckpt = tmp_path / f"d{smoothing}.ckpt"
        torch.save({"hyper_parameters": dict(module.hparams)}, ckpt)
        if smoothing == 0.0:
            assert _resumable(ckpt, gcfg, tmp_path)["hyper_parameters"]["d_smoothing"] == 0.0
        else:
            with pytest.raises(GanConfigError, match="gan.d_smoothing=0.0, but .* d_smoothing=2.0"):
                _resumable(ckpt, gcfg, tmp_path)
    # a checkpoint from before d_smoothing existed was trained without the smoothed view:
    # resuming it with the view on is refused by name, not by a state-dict shape mismatch
    hp = dict(module.hparams)
    del hp["d_smoothing"]
    older = tmp_path / "older.ckpt"
    torch.save({"hyper_parameters": hp}, older)
    assert _resumable(older, gcfg, tmp_path)["hyper_parameters"] == hp
    with pytest.raises(GanConfigError, match="gan.d_smoothing=1.0, but .* d_smoothing=0.0"):
        _resumable(older, {**gcfg, "d_smoothing": 1.0}, tmp_path)


@pytest.mark.parametrize("max_steps, max_epochs", [(20, -1), (-1, 2), (20, 50)])
def test_the_cosine_schedule_runs_from_the_rates_to_zero_over_the_run(max_steps, max_epochs):
    """Whichever of max_steps (optimizer steps: two per batch) and max_epochs ends the run,
    the rates start at lr_g / lr_d, halve midway and reach 0 at the end; constant stays."""
    from types import SimpleNamespace

    from src.gan.module import CosmoGAN

    ranges = {"Omega_M": [0.25, 0.35], "sigma_8": [0.78, 0.95], "n_s": [0.9, 1.0]}
    module = CosmoGAN(cube_size=8, channels=1, param_names=list(ranges), param_ranges=ranges,
                      noise_dim=4, width=8, min_width=4, lr_g=2e-4, lr_d=4e-4,
                      lr_schedule="cosine")
    opt_g, opt_d = module.configure_optimizers()
    rates = []
    for step in (0, 10, 20, 30):  # 20 optimizer steps in all, 5 batches per epoch
        module._trainer = SimpleNamespace(max_steps=max_steps, max_epochs=max_epochs,
                                          num_training_batches=5, global_step=step)
        module.schedule_lr(opt_g, opt_d)
        rates.append((opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"]))
    assert rates[0] == pytest.approx((2e-4, 4e-4))
    assert rates[1] == pytest.approx((1e-4, 2e-4))
    assert rates[2] == pytest.approx((0.0, 0.0), abs=1e-12)
    assert rates[3] == pytest.approx((0.0, 0.0), abs=1e-12)
    module.hparams.lr_schedule = "constant"
    module.schedule_lr(opt_g, opt_d)
    assert (opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"]) == (2e-4, 4e-4)


def _average_after_four_steps(ramp: float) -> tuple[torch.Tensor, torch.Tensor, list]:
    """generator_ema's stem bias after live values 1, 2, 4, 8 at generator steps 0..3, its
    value before them, and those values."""
    from types import SimpleNamespace

    from src.gan.module import CosmoGAN

    ranges = {"Omega_M": [0.25, 0.35], "sigma_8": [0.78, 0.95], "n_s": [0.9, 1.0]}
    module = CosmoGAN(cube_size=8, channels=1, param_names=list(ranges), param_ranges=ranges,
                      noise_dim=4, width=8, min_width=4, ema_decay=0.9999, ema_ramp=ramp)
    live, ema = module.generator.stem[0].bias, module.generator_ema.stem[0].bias
    start, values = ema.clone(), [1.0, 2.0, 4.0, 8.0]
    for t, v in enumerate(values):
        module._trainer = SimpleNamespace(global_step=2 * t)  # two optimizer steps per batch
        with torch.no_grad():
            live.fill_(v)
        module.update_ema()
    return ema, start, values


def test_a_ramp_of_two_averages_every_step_alike_a_larger_one_forgets():
    ema, start, values = _average_after_four_steps(2.0)
    assert torch.allclose(ema, (start + sum(values)) / 5)
    ema, start, values = _average_after_four_steps(10.0)
    decays = [(1 + t) / (10 + t) for t in range(4)]  # w_t = (1 - d_t) prod_{s > t} d_s
    weights = [(1 - decays[t]) * math.prod(decays[t + 1:]) for t in range(4)]
    assert weights[-1] > 2 * weights[0]
    assert torch.allclose(ema, start * math.prod(decays)
                          + sum(w * v for w, v in zip(weights, values, strict=True)))


def test_cubes_come_from_the_moving_average_of_the_generator(tmp_path):
    from src.gan.module import CosmoGAN
    from src.gan.sample import load_generator

    ranges = {"Omega_M": [0.25, 0.35], "sigma_8": [0.78, 0.95], "n_s": [0.9, 1.0]}
    module = CosmoGAN(cube_size=8, channels=1, param_names=list(ranges), param_ranges=ranges,
                      noise_dim=4, width=8, min_width=4, ema_decay=0.5)
    before = [p.clone() for p in module.generator_ema.parameters()]
    with torch.no_grad():
        for p in module.generator.parameters():
            p.add_(1.0)
    module.update_ema()  # step 0: decay min(0.5, 1/10) = 0.1
    for old, ema, live in zip(before, module.generator_ema.parameters(),
                              module.generator.parameters(), strict=True):
        assert torch.allclose(ema, 0.1 * old + 0.9 * live)
    ckpt = tmp_path / "gan.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt)
    loaded = load_generator(ckpt, 8, 1).net
    for mine, ema in zip(loaded.parameters(), module.generator_ema.parameters(), strict=True):
        assert torch.equal(mine, ema)


def _block_rms(pixel_norm_from: int) -> list[torch.Tensor]:
    """Per-voxel RMS over channels of each generator block's output, coarse to fine."""
    torch.manual_seed(0)
    gen, rms = Generator(16, noise_dim=4, width=8, min_width=4, pixel_norm_from=pixel_norm_from), []
    for block in gen.blocks:
        block.register_forward_hook(lambda m, i, out: rms.append(out.pow(2).mean(dim=1).sqrt()))
    with torch.no_grad():
        for block in gen.blocks:  # the noise weights start at 0: give the noise a say
            block.noise_weight.fill_(0.5)
        gen(torch.randn(2, 4), torch.zeros(2, 3))
    return rms


def test_pixel_norm_from_leaves_the_coarser_blocks_unnormalised():
    def unit(r):
        return torch.allclose(r, torch.ones_like(r), atol=1e-3)

    coarse, fine = _block_rms(1)
    assert not unit(coarse) and coarse.std() > 0.05 and unit(fine)
    assert all(unit(r) for r in _block_rms(0))
    assert not any(unit(r) for r in _block_rms(2))


def test_a_checkpoint_without_coarse_pixel_norm_is_rebuilt_so(tmp_path):
    """The setting has no weights of its own, so loading could not catch a generator rebuilt
    without it: the loaded net must make the trained net's cubes."""
    from src.gan.module import CosmoGAN
    from src.gan.sample import load_generator

    torch.manual_seed(0)
    ranges = {"Omega_M": [0.25, 0.35], "sigma_8": [0.78, 0.95], "n_s": [0.9, 1.0]}
    module = CosmoGAN(cube_size=16, channels=1, param_names=list(ranges), param_ranges=ranges,
                      noise_dim=4, width=8, min_width=4, pixel_norm_from=1,
                      train_data=str(tmp_path))
    ckpt = tmp_path / "gan.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt)
    loaded = load_generator(ckpt, 16, 1).net
    assert isinstance(loaded.blocks[0].norm, torch.nn.Identity)
    z, noise = loaded.draw_noise(2, torch.Generator().manual_seed(1))
    y = torch.zeros(2, 3)
    with torch.no_grad():
        assert torch.equal(loaded(z, y, noise), module.generator_ema.eval()(z, y, noise))
    # with a training's mapping that says otherwise, resuming it is refused by name
    gcfg = {"noise_dim": 4, "width": 8, "min_width": 4, "lr_g": 2e-4, "lr_d": 2e-4,
            "betas": [0.0, 0.9], "dequantize": True, "pk_weight": 0.0, "one_point_weight": 0.0,
            "ema_decay": 0.0, "periodic": True, "val_fraction": None, "split_seed": None}
    with pytest.raises(GanConfigError, match="gan.pixel_norm_from=0, but .* pixel_norm_from=1"):
        _resumable(ckpt, gcfg, tmp_path)
    assert _resumable(ckpt, {**gcfg, "pixel_norm_from": 1}, tmp_path)


@pytest.mark.parametrize("value, n_subs, periodic", [
    ("auto", [1, 1], True), ("auto", [8, 8], False), ("auto", [1, 8], False),
    (True, [8], True), (False, [1], False)])
def test_whole_boxes_train_a_periodic_gan_sub_volumes_not(value, n_subs, periodic):
    manifest = {"files": [{"n_sub": n} for n in n_subs]}
    assert resolve_periodic({"periodic": value}, manifest) is periodic


def test_padding_follows_periodicity():
    for periodic, gen_pad, disc_pad in ((True, "circular", "circular"),
                                        (False, "replicate", "zeros")):
        gen = Generator(8, noise_dim=4, width=8, min_width=4, periodic=periodic)
        disc = Discriminator(8, width=8, min_width=4, periodic=periodic)
        assert {m.padding_mode for m in gen.modules() if isinstance(m, torch.nn.Conv3d)} == {gen_pad}
        assert {m.padding_mode for m in disc.modules() if isinstance(m, torch.nn.Conv3d)} == {disc_pad}


def test_a_bad_periodic_value_is_one_error_naming_it():
    with pytest.raises(GanConfigError, match=r"gan.periodic='sometimes' must be auto, true or false"):
        resolve_periodic({"periodic": "sometimes"}, {"files": [{"n_sub": 1}]})
