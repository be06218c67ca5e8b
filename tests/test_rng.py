"""Seeds and initial noise as A1111 makes them."""

import numpy as np
import pytest
import torch

from diffusers.utils.torch_utils import randn_tensor
from modules import rng, rng_philox
from modules.rng import ImageRNG, batch_seeds, resolve_seed, slerp

SHAPE = (4, 8, 8)  # one image's latent (C, H//8, W//8) for 64x64

NV_VECTOR = [
    [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
    [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
    [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
]


def _cpu_noise(seed, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


# -- seeds ----------------------------------------------------------------------------------------------------------


def test_resolve_seed():
    assert resolve_seed(1234) == 1234
    assert resolve_seed("1234") == 1234
    assert resolve_seed(12.0) == 12
    drawn = {resolve_seed(-1) for _ in range(20)} | {resolve_seed(None), resolve_seed(""), resolve_seed("abc")}
    assert all(0 <= s < 4294967294 for s in drawn)
    assert len(drawn) > 10  # random, not a constant


def test_batch_seeds_increment_without_variation():
    assert batch_seeds(100, 7, 0.0, 3) == ([100, 101, 102], [7, 8, 9])


def test_batch_seeds_keep_seed_with_variation():
    # A1111: with subseed_strength != 0 every image keeps the seed; the subseeds still increment
    assert batch_seeds(100, 7, 0.3, 3) == ([100, 100, 100], [7, 8, 9])


def test_batch_seeds_resolve_minus_one_and_lists():
    seeds, subseeds = batch_seeds(-1, -1, 0, 2)
    assert seeds[1] == seeds[0] + 1 and subseeds[1] == subseeds[0] + 1
    assert batch_seeds([5, 9], [1, 2], 0.5, 2) == ([5, 9], [1, 2])


# -- slerp ----------------------------------------------------------------------------------------------------------


def test_slerp_endpoints():
    a, b = _cpu_noise(1), _cpu_noise(2)
    torch.testing.assert_close(slerp(0.0, a, b), a)
    torch.testing.assert_close(slerp(1.0, a, b), b, atol=1e-5, rtol=1e-5)
    mid = slerp(0.5, a, b)
    assert not torch.allclose(mid, a) and not torch.allclose(mid, b)


def test_slerp_linear_fallback_has_swapped_weights():
    # nearly parallel inputs take A1111's linear branch, which weighs low by val (not 1 - val)
    low = _cpu_noise(3)
    high = low * 1.5
    out = slerp(0.25, low, high)
    torch.testing.assert_close(out, low * 0.25 + high * 0.75)
    assert not torch.allclose(out, low * 0.75 + high * 0.25)


# -- plain noise ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["GPU", "CPU"])
def test_first_is_bit_identical_to_diffusers_randn_tensor(source):
    seeds = [11, 12, 13]
    noise = ImageRNG(SHAPE, seeds, source=source, device="cpu").first()
    expected = randn_tensor((3, *SHAPE), generator=[torch.Generator("cpu").manual_seed(s) for s in seeds])
    assert noise.dtype == torch.float32 and noise.shape == (3, *SHAPE)
    assert torch.equal(noise, expected)


def test_batch_image_equals_single_run_with_seed_plus_i():
    seeds, _ = batch_seeds(1000, 0, 0.0, 4)
    batch = ImageRNG(SHAPE, seeds).first()
    for i in range(4):
        single = ImageRNG(SHAPE, [1000 + i]).first()
        assert torch.equal(batch[i], single[0])
    assert not torch.equal(batch[0], batch[1])


def test_next_continues_each_generator_and_matches_scheduler_draws():
    r = ImageRNG(SHAPE, [5, 6])
    first = r.next()  # A1111: the first next() is first()
    assert torch.equal(first, ImageRNG(SHAPE, [5, 6]).first())
    # what diffusers' step() draws from r.generators == what next() would give
    twin = ImageRNG(SHAPE, [5, 6])
    twin.first()
    drawn = randn_tensor((2, *SHAPE), generator=r.generators)
    assert torch.equal(drawn, twin.next())
    g = torch.Generator().manual_seed(5)
    torch.randn(SHAPE, generator=g)
    torch.randn(SHAPE, generator=g)
    assert torch.equal(twin.next()[0], torch.randn(SHAPE, generator=g))


def test_ensd_reseeds_after_first_draw_only():
    plain = ImageRNG(SHAPE, [5, 6])
    ensd = ImageRNG(SHAPE, [5, 6], eta_noise_seed_delta=31337)
    assert torch.equal(plain.first(), ensd.first())  # initial noise unchanged
    later = ensd.next()
    assert not torch.equal(later, plain.next())
    assert torch.equal(later[0], _cpu_noise(5 + 31337))
    assert torch.equal(later[1], _cpu_noise(6 + 31337))
    assert ensd.generators[0].initial_seed() == 5 + 31337


def test_dtype_and_bad_arguments():
    assert ImageRNG(SHAPE, [1], dtype=torch.float16).first().dtype == torch.float16
    with pytest.raises(ValueError, match="source"):
        ImageRNG(SHAPE, [1], source="TPU")
    with pytest.raises(ValueError):
        ImageRNG((1, *SHAPE), [1])


# -- variation seeds ------------------------------------------------------------------------------------------------


def test_variation_strength_zero_is_seed_noise_one_is_subseed_noise():
    seed_noise = _cpu_noise(100)
    sub_noise = _cpu_noise(200)
    zero = ImageRNG(SHAPE, [100], subseeds=[200], subseed_strength=0.0).first()[0]
    one = ImageRNG(SHAPE, [100], subseeds=[200], subseed_strength=1.0).first()[0]
    half = ImageRNG(SHAPE, [100], subseeds=[200], subseed_strength=0.5).first()[0]
    assert torch.equal(zero, seed_noise)
    torch.testing.assert_close(one, sub_noise, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(half, slerp(0.5, seed_noise, sub_noise))


def test_variation_batch_uses_each_subseed():
    seeds, subseeds = batch_seeds(100, 200, 0.3, 2)
    noise = ImageRNG(SHAPE, seeds, subseeds=subseeds, subseed_strength=0.3).first()
    torch.testing.assert_close(noise[1], slerp(0.3, _cpu_noise(100), _cpu_noise(201)))
    # A1111: a missing subseed counts as 0
    short = ImageRNG(SHAPE, [100, 100], subseeds=[200], subseed_strength=0.3).first()
    torch.testing.assert_close(short[1], slerp(0.3, _cpu_noise(100), _cpu_noise(0)))


# -- resize seed from -----------------------------------------------------------------------------------------------


def test_resize_from_smaller_fills_center():
    # 64x64 target latent (8x8), noise made at 32x32 (4x4) and pasted at the centre
    noise = ImageRNG(SHAPE, [7], seed_resize_from_h=32, seed_resize_from_w=32).first()[0]
    small = _cpu_noise(7, (4, 4, 4))
    full = _cpu_noise(7)
    assert torch.equal(noise[:, 2:6, 2:6], small)
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2:6, 2:6] = False
    assert torch.equal(noise[:, mask], full[:, mask])


def test_resize_from_larger_crops_center():
    # noise made at 128x64 (16x8 latent: h=16, w=8) cropped to the 8x8 centre
    noise = ImageRNG(SHAPE, [7], seed_resize_from_h=128, seed_resize_from_w=64).first()[0]
    big = _cpu_noise(7, (4, 16, 8))
    assert torch.equal(noise, big[:, 4:12, 0:8])


def test_resize_from_with_variation():
    noise = ImageRNG(SHAPE, [7], subseeds=[8], subseed_strength=0.5,
                     seed_resize_from_h=32, seed_resize_from_w=32).first()[0]
    mixed = slerp(0.5, _cpu_noise(7, (4, 4, 4)), _cpu_noise(8, (4, 4, 4)))
    torch.testing.assert_close(noise[:, 2:6, 2:6], mixed)


# -- NV source ------------------------------------------------------------------------------------------------------


def test_nv_philox_test_vector():
    # A1111's documented values (exact Box-Muller); its float32 port agrees to ~3e-7
    out = rng_philox.Generator(0).randn((3, 4))
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_allclose(out, NV_VECTOR, atol=1e-6, rtol=0)


def test_nv_generator_advances_offset():
    g = rng_philox.Generator(0)
    a, b = g.randn((5,)), g.randn((5,))
    assert g.offset == 2 and not np.array_equal(a, b)
    assert np.array_equal(rng_philox.Generator(0).randn((5,)), a)
    assert not np.array_equal(rng_philox.Generator(1).randn((5,)), a)
    big = rng_philox.Generator(2**40 + 3).randn((2, 3))  # seeds above 2**32 use the key's high word
    assert not np.array_equal(big, rng_philox.Generator(3).randn((2, 3)))


def test_nv_image_rng():
    r = ImageRNG((1, 3, 4), [0, 1], source="NV")
    assert r.generators is None  # no torch generators for NV: ancestral noise comes from next()
    first = r.first()
    np.testing.assert_allclose(first[0, 0].numpy(), NV_VECTOR, atol=1e-6, rtol=0)
    torch.testing.assert_close(first[1], torch.from_numpy(rng_philox.Generator(1).randn((1, 3, 4))))
    g = rng_philox.Generator(0)
    g.randn((1, 3, 4))
    assert torch.equal(r.next()[0], torch.from_numpy(g.randn((1, 3, 4))))


def test_create_generator_sources():
    assert isinstance(rng.create_generator(1, "NV"), rng_philox.Generator)
    g = rng.create_generator(1, "CPU", device="cpu")
    assert isinstance(g, torch.Generator) and g.device.type == "cpu" and g.initial_seed() == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ancestral_sampling_batch_image_equals_single_run():
    """End to end: Euler a over a batch with per-image generators gives image i exactly as a single run with seed+i."""
    from modules.sampling import samplers

    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "leading"}

    def sample(seeds):
        bundle = samplers.build_scheduler(*samplers.resolve("Euler a"), config)
        sch = bundle.scheduler
        sch.set_timesteps(6)
        r = ImageRNG(SHAPE, seeds, eta_noise_seed_delta=31337)
        x = r.first() * sch.init_noise_sigma
        for t in sch.timesteps:
            eps = 0.5 * sch.scale_model_input(x, t)  # a stand-in model, per-image
            x = sch.step(eps, t, x, **bundle.step_kwargs(r.generators)).prev_sample
        return x

    batch = sample([20, 21])
    single = sample([21])
    torch.testing.assert_close(batch[1:], single, rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])
