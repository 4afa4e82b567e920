"""Physics validation of generated cubes (src/gan/physics.py) on cases whose answer is known.

"Simulated" cubes are Poisson-sampled log-normal fields (src/sim/synthetic.py): a power-law
spectrum with slope n_s, the log-field's amplitude proportional to sigma_8, the mean density to
Omega_M. "Generated" ones are drawn from the same process with other seeds (a perfect
generator), with doubled amplitude, with sigma_8 ignored, or smoothed; the shipped thresholds
(conf/gan_validation/default.yaml) must pass the first and fail each of the others where the
issue says they should.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from src.errors import ConfigError, DataError
from src.gan.physics import validate
from src.gan.physics_report import FILES, write_validation
from src.sim.synthetic import DEFAULT_RANGES, _field

CONF = Path(__file__).resolve().parents[1] / "conf" / "gan_validation" / "default.yaml"
SIZE, N, BOX = 32, 20, 64.0
CHECKS = ("pk_ratio", "one_point_ks", "sigma8_slope", "peak_counts")
MISSING = object()  # a key left out of the settings


def defaults(**changes) -> dict:
    t = yaml.safe_load(CONF.read_text())
    t.update(changes)
    return t


def draw(seed: int, params: np.ndarray, sigma_8=None) -> np.ndarray:
    """(N, 1, S, S, S) counts, one cube per parameter row; `sigma_8` maps the label's sigma_8
    to the one the cube is drawn at (the generator's mistake)."""
    rng = np.random.default_rng(seed)
    cubes = []
    for p in params:
        q = p.copy()
        if sigma_8 is not None:
            q[1] = sigma_8(q[1])
        cubes.append(_field(rng, SIZE, q)[None])
    return np.stack(cubes)


def smooth(counts: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of (N, 1, S, S, S) counts by `sigma` voxels (mean kept)."""
    k = 2 * np.pi * np.fft.fftfreq(SIZE)
    kz = 2 * np.pi * np.fft.rfftfreq(SIZE)
    kernel = np.exp(-0.5 * sigma**2 * (k[:, None, None] ** 2 + k[None, :, None] ** 2
                                       + kz[None, None, :] ** 2))
    return np.fft.irfftn(np.fft.rfftn(counts, axes=(2, 3, 4)) * kernel, s=(SIZE,) * 3,
                         axes=(2, 3, 4))


def checks(result: dict) -> dict:
    return {c["name"]: c for c in result["checks"]}


@pytest.fixture(scope="module")
def case():
    """The parameters (the synthetic data's default ranges), the simulated cubes, and the
    validation of each kind of generator against them; one torch thread (the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    params = np.column_stack([rng.uniform(*DEFAULT_RANGES[p], N)
                              for p in ("Omega_M", "sigma_8", "n_s")])
    sim = draw(1, params)
    middle = float(np.mean(DEFAULT_RANGES["sigma_8"]))
    gens = {"same": draw(2, params), "double": draw(3, params, lambda s: 2 * s),
            "ignore": draw(4, params, lambda s: middle), "smooth": smooth(draw(5, params), 1.0)}
    results = {name: validate(sim, gen, params, defaults(), BOX) for name, gen in gens.items()}
    yield {"params": params, "sim": sim, "gens": gens, "results": results}
    torch.set_num_threads(threads)


def test_an_independent_draw_of_the_same_process_passes_every_check(case):
    result = case["results"]["same"]
    assert [c["name"] for c in result["checks"]] == list(CHECKS)
    assert {name: c["passed"] for name, c in checks(result).items()} == dict.fromkeys(CHECKS, True)
    assert result["passed"] is True
    # and not by a loose measure: the raw ratio stays near 1 and the distance near 0
    assert np.max(np.abs(np.asarray(result["pk"]["ratio"]) - 1)) < 0.3
    assert checks(result)["one_point_ks"]["value"] < 0.01


def test_doubled_amplitude_fails_the_power_spectrum_and_the_one_point_checks(case):
    result = case["results"]["double"]
    by = checks(result)
    assert not by["pk_ratio"]["passed"] and not by["one_point_ks"]["passed"]
    assert result["passed"] is False
    # a log-field twice as strong has more than twice the power at every k
    assert min(result["pk"]["ratio"][0]) > 2


def test_a_generator_ignoring_sigma_8_fails_the_response_check_a_matched_one_passes(case):
    ignore, same = case["results"]["ignore"], case["results"]["same"]
    assert not checks(ignore)["sigma8_slope"]["passed"]
    assert checks(same)["sigma8_slope"]["passed"]
    s8 = ignore["sigma8_response"]
    # the simulated variance grows with sigma_8, the generated one does not respond
    assert s8["slope_sim"][0] > 0
    assert abs(s8["slope_gen"][0]) < 2 * s8["se_gen"][0] < s8["slope_sim"][0]


def test_smoothed_fields_fail_the_peak_count_check(case):
    result = case["results"]["smooth"]
    assert not checks(result)["peak_counts"]["passed"]
    peaks = result["peaks"]
    # blurring merges maxima: fewer peaks at every height
    assert all(g < s for g, s in zip(peaks["gen"][0], peaks["sim"][0], strict=True))


def test_thresholds_at_the_edge_pass_and_just_below_fail(case):
    """n_sigma = 0: each value is the plain error; a threshold equal to it passes (value <=
    threshold), the next float below fails."""
    sim, gen, params = case["sim"], case["gens"]["same"], case["params"]
    plain = validate(sim, gen, params, defaults(n_sigma=0.0), BOX)
    values = {name: c["value"] for name, c in checks(plain).items()}
    assert values["pk_ratio"] == max(abs(r - 1) for r in plain["pk"]["ratio"][0])
    assert all(v > 0 for v in values.values())
    keys = {"pk_ratio": "pk_max_ratio_error", "one_point_ks": "one_point_max_ks",
            "sigma8_slope": "sigma8_max_slope_error", "peak_counts": "peak_max_rel_error"}
    at = validate(sim, gen, params, defaults(n_sigma=0.0, **{keys[n]: v for n, v in values.items()}),
                  BOX)
    assert all(c["passed"] for c in at["checks"]) and at["passed"] is True
    below = validate(sim, gen, params, defaults(
        n_sigma=0.0, **{keys[n]: math.nextafter(v, 0.0) for n, v in values.items()}), BOX)
    assert not any(c["passed"] for c in below["checks"]) and below["passed"] is False
    # the forgiven standard errors only ever lower a value
    assert all(checks(case["results"]["same"])[n]["value"] <= v for n, v in values.items())


def test_identical_cubes_score_zero_and_pass_even_at_zero_thresholds(case):
    zero = defaults(n_sigma=0.0, pk_max_ratio_error=0.0, one_point_max_ks=0.0,
                    sigma8_max_slope_error=0.0, peak_max_rel_error=0.0)
    result = validate(case["sim"], case["sim"], case["params"], zero, BOX)
    assert [c["value"] for c in result["checks"]] == [0.0] * 4
    assert result["passed"] is True


def test_each_channel_is_checked_and_the_worst_one_named(case):
    sim, params = case["sim"], case["params"]
    two_sim = np.concatenate([sim, sim], axis=1)
    two_gen = np.concatenate([case["gens"]["same"], case["gens"]["double"]], axis=1)
    result = validate(two_sim, two_gen, params, defaults(), BOX)
    pk = checks(result)["pk_ratio"]
    assert not pk["passed"] and "channel 1" in pk["what"]
    assert len(result["pk"]["ratio"]) == 2 and max(result["pk"]["ratio"][0]) < 2


@pytest.mark.parametrize(("change", "key"), [
    ({"pk_max_ratio_error": -0.1}, "gan_validation.pk_max_ratio_error"),
    ({"one_point_max_ks": 1.5}, "gan_validation.one_point_max_ks"),
    ({"n_sigma": -1}, "gan_validation.n_sigma"),
    ({"pk_k_max_frac": 0.0}, "gan_validation.pk_k_max_frac"),
    ({"pk_n_bins": 0}, "gan_validation.pk_n_bins"),
    ({"one_point_bins": 2.5}, "gan_validation.one_point_bins"),
    ({"peak_nu": []}, "gan_validation.peak_nu"),
    ({"peak_nu": [1.0, "high"]}, "gan_validation.peak_nu[1]"),
    ({"peak_smoothing": "wide"}, "gan_validation.peak_smoothing"),
    ({"sigma8_max_slope_error": None}, "gan_validation.sigma8_max_slope_error"),
    ({"pk_max_ratio_eror": 0.1}, "gan_validation.pk_max_ratio_eror"),  # a typo: unknown key
    ({"peak_max_rel_error": MISSING}, "gan_validation.peak_max_rel_error"),
])
def test_bad_thresholds_raise_one_config_error_naming_the_key(change, key):
    t = {k: v for k, v in defaults(**change).items() if v is not MISSING}
    cubes = np.zeros((1, 1, 4, 4, 4))  # checked before the cubes: these would fail later
    with pytest.raises(ConfigError) as err:
        validate(cubes, cubes, np.zeros((1, 3)), t, BOX)
    assert key in str(err.value)


def test_inputs_that_cannot_be_compared_raise_a_data_error(case):
    sim, params = case["sim"], case["params"]
    with pytest.raises(DataError, match="shape"):
        validate(sim, sim[:, :, :16, :16, :16], params, defaults(), BOX)
    same_s8 = params.copy()
    same_s8[:, 1] = 0.8
    with pytest.raises(DataError, match="sigma_8"):
        validate(sim, sim, same_s8, defaults(), BOX)


def test_write_validation_writes_the_json_the_table_and_the_figure(case, tmp_path):
    result = case["results"]["smooth"]
    paths = write_validation(tmp_path / "campaign", result)
    assert [p.name for p in paths] == list(FILES) and all(p.is_file() for p in paths)
    assert json.loads(paths[0].read_text()) == result
    text = paths[1].read_text()
    for c in result["checks"]:
        verdict = "PASS" if c["passed"] else "FAIL"
        row = next(line for line in text.splitlines() if line.startswith(f"| {c['name']} |"))
        assert row.startswith(f"| {c['name']} | {c['value']:.3g} | {c['threshold']:.3g} | {verdict} |")
        assert row.count("|") == 6  # five cells: no '|' inside the description
    assert "**FAIL**" in text
    # one table row per k-bin and per peak level
    k_rows = [line for line in text.splitlines() if line.startswith("| 0 | ")]
    assert len(k_rows) == len(result["pk"]["k"]) + 1 + 1 + len(result["peaks"]["nu"])
    with Image.open(paths[2]) as img:
        img.verify()
        assert img.format == "PNG" and min(img.size) > 300
