"""How the GAN's generator follows the parameters: the FiLM modulation (`gan.modulate`)."""

from __future__ import annotations

import pytest
import torch

from src.gan.nets import GanConfigError, Generator
from src.gan.train_gan import _resumable
from src.util import checks

RANGES = {"Omega_M": [0.25, 0.35], "sigma_8": [0.78, 0.95], "n_s": [0.9, 1.0]}


def _last_block_rms(gen: Generator, params: torch.Tensor) -> torch.Tensor:
    """Per-voxel RMS over channels of the last block's output, mean over the cube."""
    rms = []
    gen.blocks[-1].register_forward_hook(lambda m, i, out: rms.append(out.pow(2).mean(dim=1)))
    z, noise = gen.draw_noise(params.shape[0], torch.Generator().manual_seed(0))
    with torch.no_grad():
        gen(z, params, noise)
    return rms[0].sqrt().mean(dim=(1, 2, 3))


def test_a_modulated_generator_starts_as_the_plain_one_and_can_follow_sigma_8():
    torch.manual_seed(0)
    plain = Generator(16, noise_dim=4, width=8, min_width=4, modulate=False)
    modulated = Generator(16, noise_dim=4, width=8, min_width=4, modulate=True)
    missing = modulated.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(".modulation." in k for k in missing)
    params = torch.tensor([[0.0, -1.0, 0.0], [0.0, 1.0, 0.0]])  # sigma_8 low, high
    z, noise = plain.draw_noise(2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(plain(z, params, noise), modulated(z, params, noise))
    # PixelNorm holds the plain block's features at unit RMS whatever sigma_8 is; a modulation
    # weight on sigma_8 makes their strength grow with it
    assert torch.allclose(_last_block_rms(plain, params), torch.ones(2), atol=1e-3)
    with torch.no_grad():
        modulated.blocks[-1].modulation.weight[:, 1] = 0.5
    low, high = _last_block_rms(modulated, params)
    assert low == pytest.approx(0.5, abs=1e-3) and high == pytest.approx(1.5, abs=1e-3)


def test_a_string_that_looks_like_a_boolean_is_refused():
    # build_gan routes gan.modulate through this check (tests/test_gan_generator.py, the bad
    # values' table); "yes" is truthy, so a plain bool() would have taken it
    with pytest.raises(GanConfigError, match=r"gan.modulate='yes' must be true or false"):
        checks.boolean("gan.modulate", "yes", GanConfigError)


def test_a_modulated_checkpoint_is_rebuilt_modulated_and_resumed_only_so(tmp_path):
    from src.gan.module import CosmoGAN
    from src.gan.sample import load_generator

    module = CosmoGAN(cube_size=16, channels=1, param_names=list(RANGES), param_ranges=RANGES,
                      noise_dim=4, width=8, min_width=4, modulate=True, train_data=str(tmp_path))
    with torch.no_grad():
        for block in module.generator_ema.blocks:
            block.modulation.weight.normal_()
    ckpt = tmp_path / "gan.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt)
    loaded = load_generator(ckpt, 16, 1).net
    z, noise = loaded.draw_noise(2, torch.Generator().manual_seed(1))
    y = torch.rand(2, 3) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(z, y, noise), module.generator_ema.eval()(z, y, noise))
    gcfg = {"noise_dim": 4, "width": 8, "min_width": 4, "lr_g": 2e-4, "lr_d": 2e-4,
            "betas": [0.0, 0.9], "dequantize": True, "pk_weight": 0.0, "one_point_weight": 0.0,
            "periodic": True, "val_fraction": None, "split_seed": None}
    with pytest.raises(GanConfigError, match="gan.modulate=False, but .* modulate=True"):
        _resumable(ckpt, gcfg, tmp_path)
    assert _resumable(ckpt, {**gcfg, "modulate": True}, tmp_path)
