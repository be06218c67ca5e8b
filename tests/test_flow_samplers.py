"""The flow-matching sampler table: each name builds, its schedule is the one the family's diffusers pipeline sets,
the user's shift and schedule types change what they should, and SD-only names are refused with the ones that
work."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.sampling import flow_samplers as fs

FLUX = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
        "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
        "max_image_seq_len": 4096}
SD3 = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def _sigmas(name, config, family, seq=1024, steps=20, schedule=None, shift=None):
    bundle = fs.build_flow_scheduler(name, schedule, config, shift=shift)
    fs.set_flow_timesteps(bundle.scheduler, steps, seq, "cpu", family)
    return bundle.scheduler.sigmas.float()


@pytest.mark.parametrize("name", fs.flow_sampler_names())
@pytest.mark.parametrize("family,config", [("flux", FLUX), ("sd3", SD3)])
def test_every_sampler_builds_a_full_decreasing_schedule(name, family, config):
    bundle = fs.build_flow_scheduler(name, None, config)
    timesteps = fs.set_flow_timesteps(bundle.scheduler, 8, 1024, "cpu", family)
    sigmas = bundle.scheduler.sigmas.float()
    assert len(timesteps) == 8 * bundle.scheduler.order - (bundle.scheduler.order - 1)
    assert sigmas[0] > 0.99 and sigmas[-1] == 0
    assert torch.all(sigmas[1:] <= sigmas[:-1])


def test_euler_equals_the_pipelines_schedules():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    ref = FlowMatchEulerDiscreteScheduler.from_config(FLUX)
    mu = calculate_shift(1024, 256, 4096, 0.5, 1.15)
    retrieve_timesteps(ref, 20, "cpu", sigmas=np.linspace(1.0, 1 / 20, 20), mu=mu)
    assert torch.equal(_sigmas("Euler", FLUX, "flux"), ref.sigmas.float())
    ref = FlowMatchEulerDiscreteScheduler.from_config(SD3)
    retrieve_timesteps(ref, 20, "cpu")
    assert torch.equal(_sigmas("Euler", SD3, "sd3"), ref.sigmas.float())


def test_flux_shifts_by_resolution_unless_the_user_sets_a_shift():
    small, large = _sigmas("Euler", FLUX, "flux", seq=256), _sigmas("Euler", FLUX, "flux", seq=4096)
    assert torch.all(large[1:-1] > small[1:-1])  # bigger pictures stay noisy longer
    assert torch.equal(_sigmas("Euler", SD3, "sd3", seq=256), _sigmas("Euler", SD3, "sd3", seq=4096))
    fixed = [_sigmas("Euler", FLUX, "flux", seq=s, shift=2.0) for s in (256, 4096)]
    assert torch.equal(fixed[0], fixed[1])
    assert torch.all(_sigmas("Euler", SD3, "sd3", shift=6.0)[1:-1] > _sigmas("Euler", SD3, "sd3")[1:-1])


def test_heun_without_dynamic_shifting_gets_the_same_shift_fixed():
    """FlowMatchHeun takes no `mu`: it gets Flux's shift for this resolution, e^mu, as its fixed shift."""
    import math

    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    bundle = fs.build_flow_scheduler("Heun", None, FLUX)
    fs.set_flow_timesteps(bundle.scheduler, 4, 1024, "cpu", "flux")
    assert bundle.scheduler.config.shift == pytest.approx(math.exp(calculate_shift(1024, 256, 4096, 0.5, 1.15)))


def test_schedule_types_where_the_math_allows():
    simple = _sigmas("Euler", SD3, "sd3", steps=10)
    for label in ("Karras", "Exponential", "Beta"):
        other = _sigmas("Euler", SD3, "sd3", steps=10, schedule=label)
        assert not torch.allclose(other, simple), label
    with pytest.raises(ValueError, match="Schedule types for DPM\\+\\+ 2M: Automatic, Simple"):
        fs.build_flow_scheduler("DPM++ 2M", "Karras", SD3)


@pytest.mark.parametrize("name", ["Euler a", "DDIM", "DPM++ SDE", "nonsense"])
def test_sd_only_and_unknown_names_are_refused_with_the_ones_that_work(name):
    with pytest.raises(ValueError) as e:
        fs.build_flow_scheduler(name, None, FLUX)
    assert "flow-matching (Flux/SD3)" in str(e.value) and "Euler, Heun, DPM++ 2M" in str(e.value)


def test_aliases_and_legacy_suffixes():
    assert fs.resolve_flow("k_euler", None)[0].name == "Euler"
    assert fs.resolve_flow("euler", "karras")[1].label == "Karras"
    spec, schedule = fs.resolve_flow("Euler Karras", None)
    assert (spec.name, schedule.label) == ("Euler", "Karras")


def test_img2img_start_is_the_same_for_every_class():
    x0, noise = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    starts = []
    for name in ("Euler", "DPM++ 2M"):
        bundle = fs.build_flow_scheduler(name, None, SD3)
        timesteps = fs.set_flow_timesteps(bundle.scheduler, 10, 16, "cpu", "sd3")
        t = timesteps[3:4]
        sigma = float(bundle.scheduler.sigmas[3])
        start = fs.add_flow_noise(bundle.scheduler, x0, noise, t)
        assert torch.allclose(start, (1 - sigma) * x0 + sigma * noise, atol=1e-5), name
        starts.append(start)


@pytest.mark.parametrize("name", fs.flow_sampler_names())
def test_a_straight_flow_lands_on_its_target(name):
    """A model that knows the answer (the velocity from the current point straight to x0) is followed to x0 by
    every sampler, the stochastic ones included."""
    torch.manual_seed(0)
    x0, noise = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    bundle = fs.build_flow_scheduler(name, None, SD3)
    scheduler = bundle.scheduler
    timesteps = fs.set_flow_timesteps(scheduler, 6, 16, "cpu", "sd3")
    x = noise.clone()
    for i, t in enumerate(timesteps):
        velocity = (x - x0) / scheduler.sigmas[i]
        x = scheduler.step(velocity, t, x, **bundle.step_kwargs(generator=torch.Generator().manual_seed(1)),
                           return_dict=False)[0]
    assert (x - x0).abs().max() < 1e-4, name
