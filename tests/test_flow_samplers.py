"""The flow-matching sampler table (Flux/SD3): every name builds and runs, Euler's schedule is exactly the one the
family's diffusers pipeline sets, the user's shift and the schedule types change what they should, img2img starts
from the right point, and SD-only names are refused with the ones that work. No weights: schedulers only."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from modules.sampling import flow_samplers as fs
from modules.sampling.samplers import UnknownSamplerError

# black-forest-labs/FLUX.1-dev and stabilityai/stable-diffusion-3-medium-diffusers, scheduler/scheduler_config.json
FLUX = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0.dev0",
        "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
        "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}
SD3 = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.29.0.dev0",
       "num_train_timesteps": 1000, "shift": 3.0}
CONFIGS = {"flux": FLUX, "sd3": SD3}
NAMES = ["Euler", "Heun", "DPM++ 2M", "DPM++ 2M SDE", "UniPC", "LCM"]


def _schedule(name, config, *, seq=1024, steps=10, schedule=None, shift=None, family=None):
    bundle = fs.build_flow_scheduler(name, schedule, config, shift=shift)
    fs.set_flow_timesteps(bundle.scheduler, steps, seq, "cpu", family)
    return bundle.scheduler


def test_the_menus_list_the_flow_samplers_and_schedule_types_in_ui_order():
    assert fs.flow_sampler_names() == NAMES
    assert tuple(fs.FLOW_SCHEDULE_TYPES) == ("Automatic", "Simple", "Karras", "Exponential", "Beta")


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_runs_the_steps_asked_for_from_noise_to_clean(name, family):
    scheduler = _schedule(name, CONFIGS[family], steps=8)
    timesteps, sigmas = scheduler.timesteps, scheduler.sigmas
    assert len(timesteps) == 8 * scheduler.order - (scheduler.order - 1)  # Heun: 2 model calls a step but the last
    assert len(torch.unique(timesteps)) == 8
    assert torch.all(torch.diff(timesteps.float()) <= 0)
    assert sigmas[0] == pytest.approx(1.0, abs=1e-3) and sigmas[-1] == 0


def test_euler_sets_exactly_what_the_flux_pipeline_sets():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    ref = FlowMatchEulerDiscreteScheduler.from_config(FLUX)
    mu = calculate_shift(1024, 256, 4096, 0.5, 1.15)
    retrieve_timesteps(ref, 20, "cpu", sigmas=np.linspace(1.0, 1 / 20, 20), mu=mu)
    ours = _schedule("Euler", FLUX, seq=1024, steps=20)
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
    assert ours.config.use_dynamic_shifting and ours.sigmas[10] > 0.6  # the dynamic shift at work, not shift 1


def test_euler_sets_exactly_what_the_sd3_pipeline_sets():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import retrieve_timesteps

    ref = FlowMatchEulerDiscreteScheduler.from_config(SD3)
    retrieve_timesteps(ref, 20, "cpu")
    ours = _schedule("Euler", SD3, seq=1024, steps=20)
    assert ours.config.shift == 3.0
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)


@pytest.mark.parametrize("name", ["DPM++ 2M", "UniPC", "LCM"])
def test_the_other_classes_get_what_the_flux_pipeline_would_set_on_them(name):
    """FluxPipeline's step 5 on a copy of the same scheduler: DPM/UniPC make their own flow sigmas and take `mu`."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    ours = fs.build_flow_scheduler(name, None, FLUX).scheduler
    ref = type(ours).from_config(ours.config)
    sigmas = None if ref.config.get("use_flow_sigmas") else np.linspace(1.0, 1 / 12, 12)
    mu = calculate_shift(4096, ref.config.base_image_seq_len, ref.config.max_image_seq_len, ref.config.base_shift,
                         ref.config.max_shift)
    retrieve_timesteps(ref, 12, "cpu", sigmas=sigmas, mu=mu)
    fs.set_flow_timesteps(ours, 12, 4096, "cpu")
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)


@pytest.mark.parametrize("name", NAMES)
def test_flux_shifts_by_resolution_unless_the_user_sets_a_shift(name):
    small, large = (_schedule(name, FLUX, seq=seq).sigmas for seq in (256, 4096))
    assert torch.all(large[1:-1] > small[1:-1])  # bigger pictures stay noisy longer
    for family in (None, "flux"):
        fixed = [_schedule(name, FLUX, seq=seq, shift=2.0, family=family).sigmas for seq in (256, 4096)]
        assert torch.equal(fixed[0], fixed[1])
    sd3 = [_schedule(name, SD3, seq=seq).sigmas for seq in (256, 4096)]
    assert torch.equal(sd3[0], sd3[1])
    assert torch.all(_schedule(name, SD3, shift=6.0).sigmas[1:-1] > sd3[0][1:-1])  # more shift: noisier middle


def test_heun_gets_the_flux_shift_for_the_resolution_as_a_fixed_shift():
    """FlowMatchHeun has no dynamic shifting: it runs with e^mu, as if the model's config said so."""
    from diffusers import FlowMatchHeunDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    shift = float(np.exp(calculate_shift(1024, 256, 4096, 0.5, 1.15)))
    ours = _schedule("Heun", FLUX, seq=1024, steps=6)
    ref = FlowMatchHeunDiscreteScheduler(shift=shift)
    ref.set_timesteps(6, "cpu")
    assert ours.config.shift == pytest.approx(shift)
    assert torch.allclose(ours.sigmas, ref.sigmas) and torch.allclose(ours.timesteps, ref.timesteps)


@pytest.mark.parametrize("name", ["Euler", "LCM"])
def test_karras_exponential_and_beta_reshape_the_flow_schedule(name):
    simple = _schedule(name, FLUX, schedule="Simple").sigmas
    assert torch.equal(simple, _schedule(name, FLUX).sigmas)  # Simple is the pipeline's schedule, as Automatic
    for label in ("Karras", "Exponential", "Beta"):
        sigmas = _schedule(name, FLUX, schedule=label).sigmas
        assert not torch.allclose(sigmas, simple), label
        assert sigmas[0] == pytest.approx(float(simple[0]), abs=1e-5) and sigmas[-1] == 0, label
        assert sigmas[-2] == pytest.approx(float(simple[-2]), abs=1e-5), label  # same range, other spacing
        assert torch.all(torch.diff(sigmas) < 0), label


@pytest.mark.parametrize("name", ["Heun", "DPM++ 2M", "DPM++ 2M SDE", "UniPC"])
def test_schedule_types_a_class_cannot_apply_to_flow_sigmas_are_refused(name):
    with pytest.raises(ValueError, match=f"Schedule types for {re.escape(name)}: Automatic, Simple\\.$"):
        fs.build_flow_scheduler(name, "Karras", FLUX)
    with pytest.raises(ValueError, match="Schedule types for Euler: Automatic, Simple, Karras, Exponential, Beta"):
        fs.build_flow_scheduler("Euler", "SGM Uniform", FLUX)


@pytest.mark.parametrize("name", ["Euler a", "DDIM", "DPM++ SDE", "PLMS", "nonsense"])
def test_sd_only_and_unknown_samplers_are_refused_with_the_ones_that_work(name):
    with pytest.raises(UnknownSamplerError) as e:
        fs.build_flow_scheduler(name, None, FLUX)
    assert "not available for flow-matching (Flux/SD3) models" in str(e.value)
    assert "Euler, Heun, DPM++ 2M, DPM++ 2M SDE, UniPC, LCM" in str(e.value)


@pytest.mark.parametrize("request_, expected", [
    ((None, None), ("Euler", "Automatic")),
    (("", ""), ("Euler", "Automatic")),
    (("k_euler", None), ("Euler", "Automatic")),
    (("euler", "karras"), ("Euler", "Karras")),
    (("Euler Karras", "Beta"), ("Euler", "Karras")),  # the name's suffix wins, as in A1111
    (("DPM++ 2M Simple", None), ("DPM++ 2M", "Simple")),
    (("k_dpmpp_2m_sde", None), ("DPM++ 2M SDE", "Automatic")),
    (("UNIPC", None), ("UniPC", "Automatic")),
    (("LCM Karras", None), ("LCM", "Karras")),
])
def test_names_aliases_and_legacy_suffixes(request_, expected):
    bundle = fs.build_flow_scheduler(*request_, SD3)
    assert (bundle.sampler.name, bundle.schedule.label) == expected


def test_dpmpp_2m_karras_is_read_as_dpmpp_2m_with_karras_and_refused_for_the_schedule():
    with pytest.raises(ValueError) as e:
        fs.build_flow_scheduler("DPM++ 2M Karras", None, FLUX)
    assert not isinstance(e.value, UnknownSamplerError)
    assert "'Karras' is not available for DPM++ 2M" in str(e.value)


def test_img2img_starts_at_the_same_point_with_flowmatch_and_dpm():
    torch.manual_seed(0)
    x0, noise = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    dpm = _schedule("DPM++ 2M", SD3, shift=1.0)
    euler = fs.build_flow_scheduler("Euler", None, SD3, shift=1.0).scheduler
    euler.set_timesteps(sigmas=dpm.sigmas[:-1].numpy(), device="cpu")  # shift 1 keeps them: the same sigmas
    assert torch.equal(euler.sigmas, dpm.sigmas)
    for start in (0, 3, 7):  # the run's first step, as processing sets it
        sigma = float(dpm.sigmas[start])
        expected = (1 - sigma) * x0 + sigma * noise
        points = []
        for scheduler in (euler, dpm):
            scheduler.set_begin_index(start)
            points.append(fs.add_flow_noise(scheduler, x0, noise, scheduler.timesteps[start:start + 1]))
            assert torch.allclose(points[-1], expected, atol=1e-6), (type(scheduler).__name__, start)
        assert torch.allclose(points[0], points[1], atol=1e-6)


def test_euler_follows_a_straight_flow_exactly_from_an_img2img_start():
    torch.manual_seed(0)
    x0, noise = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    scheduler = _schedule("Euler", FLUX, steps=6)
    scheduler.set_begin_index(2)
    x = fs.add_flow_noise(scheduler, x0, noise, scheduler.timesteps[2:3])
    for t in scheduler.timesteps[2:]:
        x = scheduler.step(noise - x0, t, x, return_dict=False)[0]  # the flow's constant velocity
    assert torch.allclose(x, x0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_lands_on_the_image_a_perfect_model_points_at(name):
    """A model that knows the answer (the velocity from the current point straight to x0) is followed to x0 by
    every sampler, the stochastic ones included."""
    torch.manual_seed(0)
    x0, noise = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    bundle = fs.build_flow_scheduler(name, None, FLUX)
    scheduler = bundle.scheduler
    timesteps = fs.set_flow_timesteps(scheduler, 5, 1024, "cpu")
    x = fs.add_flow_noise(scheduler, x0, noise, timesteps[:1])
    generator = torch.Generator().manual_seed(1)
    for i, t in enumerate(timesteps):
        velocity = (x - x0) / scheduler.sigmas[i]
        x = scheduler.step(velocity, t, x, **bundle.step_kwargs(generator=generator), return_dict=False)[0]
    assert torch.isfinite(x).all() and (x - x0).abs().max() < 1e-4
