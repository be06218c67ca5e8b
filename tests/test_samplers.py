"""Sampler and schedule-type names (A1111's) → diffusers schedulers."""

import inspect

import numpy as np
import pytest
import torch

import diffusers
from modules.sampling import samplers as S
from modules.sampling.samplers import UnknownSamplerError, UnsupportedScheduleError

# diffusers' schedulers trip NumPy 2's __array__ deprecation thousands of times; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SD15_CONFIG = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "clip_sample": False, "timestep_spacing": "leading",
}
SDXL_CONFIG = {
    "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "interpolation_type": "linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None,
    "use_karras_sigmas": False,
}

A1111_UI_ORDER = [
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
    "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DDIM", "PLMS", "UniPC", "LCM",
]


def _model_sigmas(config=SD15_CONFIG):
    betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, 1000) ** 2
    ac = np.cumprod(1 - betas)
    return ((1 - ac) / ac) ** 0.5


def _k_diffusion_karras(n, sigma_min, sigma_max, rho=7.0):
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def _run(bundle, steps=10, n_steps=3, batch=1, seed=0):
    sch = bundle.scheduler
    sch.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g) * sch.init_noise_sigma
    gens = [torch.Generator().manual_seed(seed + 100 + i) for i in range(batch)]
    for t in sch.timesteps[:n_steps]:
        xin = sch.scale_model_input(x, t)
        eps = 0.5 * xin  # a stand-in "model"
        x = sch.step(eps, t, x, **bundle.step_kwargs(gens, eta=0.0)).prev_sample
    return x


# -- the table ------------------------------------------------------------------------------------------------------


def test_a1111_samplers_in_ui_order_then_extras():
    names = S.sampler_names()
    assert names[: len(A1111_UI_ORDER)] == A1111_UI_ORDER
    assert {"DDPM", "DEIS", "TCD"} <= set(names)
    assert len(names) == len(set(names))
    for missing in S.A1111_ONLY_SAMPLERS:
        assert missing not in names


@pytest.mark.parametrize("name,schedule", [
    ("DPM++ 2M", "Karras"), ("DPM++ SDE", "Karras"), ("DPM++ 2M SDE", "Exponential"),
    ("DPM++ 2M SDE Heun", "Exponential"), ("DPM++ 2S a", "Karras"), ("DPM++ 3M SDE", "Exponential"),
    ("DPM2", "Karras"), ("DPM2 a", "Karras"), ("Euler a", "Automatic"), ("Euler", "Automatic"),
    ("LMS", "Automatic"), ("Heun", "Automatic"), ("DDIM", "Automatic"), ("UniPC", "Automatic"),
])
def test_default_schedule_type_as_a1111(name, schedule):
    assert S.resolve(name)[1].label == schedule
    assert S.resolve(name, "Automatic")[1].label == schedule
    assert S.resolve(name, "")[1].label == schedule


def test_every_spec_option_exists_in_its_diffusers_class():
    for spec in S.SAMPLERS:
        cls = getattr(diffusers, spec.scheduler_class)
        params = inspect.signature(cls.__init__).parameters
        assert set(spec.kwargs) <= set(params), spec.name
        assert spec.default_schedule in S.schedule_type_labels()


@pytest.mark.slow
@pytest.mark.parametrize("config", [SD15_CONFIG, SDXL_CONFIG], ids=["sd15", "sdxl"])
@pytest.mark.parametrize("name", S.sampler_names())
def test_every_sampler_builds_and_steps(name, config):
    spec, schedule = S.resolve(name)
    bundle = S.build_scheduler(spec, schedule, config, seed=1)
    assert type(bundle.scheduler).__name__ == spec.scheduler_class
    x = _run(bundle)
    assert x.shape == (1, 4, 8, 8)
    assert torch.isfinite(x).all()
    if "final_sigmas_type" in inspect.signature(type(bundle.scheduler).__init__).parameters:
        assert bundle.scheduler.config.final_sigmas_type == "zero"


def test_config_is_not_mutated_and_prediction_type_carries_over():
    cfg = dict(SD15_CONFIG, prediction_type="v_prediction")
    before = dict(cfg)
    b = S.build_scheduler(*S.resolve("Euler"), cfg)
    assert cfg == before
    assert b.scheduler.config.prediction_type == "v_prediction"


def test_sampler_kwargs_applied():
    sde = S.build_scheduler(*S.resolve("DPM++ 2M SDE"), SD15_CONFIG).scheduler.config
    assert (sde.algorithm_type, sde.solver_order) == ("sde-dpmsolver++", 2)
    heun = S.build_scheduler(*S.resolve("DPM++ 2M SDE Heun"), SD15_CONFIG).scheduler.config
    assert heun.solver_type == "heun"
    m3 = S.build_scheduler(*S.resolve("DPM++ 3M SDE"), SD15_CONFIG).scheduler.config
    assert (m3.algorithm_type, m3.solver_order) == ("sde-dpmsolver++", 3)
    plms = S.build_scheduler(*S.resolve("PLMS"), SD15_CONFIG).scheduler.config
    assert plms.skip_prk_steps is True
    m2 = S.build_scheduler(*S.resolve("DPM++ 2M"), SD15_CONFIG).scheduler.config
    assert (m2.algorithm_type, m2.use_karras_sigmas) == ("dpmsolver++", True)


def test_step_kwargs_follow_step_signature():
    g = torch.Generator()
    ddim = S.build_scheduler(*S.resolve("DDIM"), SD15_CONFIG)
    assert ddim.accepts_eta and ddim.accepts_generator
    assert ddim.step_kwargs(g, 0.5) == {"generator": g, "eta": 0.5}
    euler_a = S.build_scheduler(*S.resolve("Euler a"), SD15_CONFIG)
    assert euler_a.accepts_generator and not euler_a.accepts_eta
    assert euler_a.step_kwargs(g, 0.5) == {"generator": g}
    heun = S.build_scheduler(*S.resolve("Heun"), SD15_CONFIG)
    assert not heun.accepts_generator and heun.step_kwargs(g, 0.5) == {}
    assert S.step_kwargs(heun.scheduler, None, None) == {}
    sde = S.build_scheduler(*S.resolve("DPM++ 2M SDE"), SD15_CONFIG)
    assert sde.accepts_variance_noise
    assert S.step_kwargs(sde.scheduler, g, None, s_noise=1.0) == {"generator": g}
    ddim_eta = S.build_scheduler(*S.resolve("DDIM"), SD15_CONFIG, eta=0.7)
    assert ddim_eta.step_kwargs(g) == {"generator": g, "eta": 0.7}
    with pytest.raises(ValueError):
        S.build_scheduler(*S.resolve("DDIM"), SD15_CONFIG, eta=-1)


# -- names ----------------------------------------------------------------------------------------------------------


def test_none_is_api_default_euler():
    spec, schedule = S.resolve(None)
    assert spec.name == "Euler" and schedule.label == "Automatic"
    assert S.resolve("")[0].name == "Euler"


@pytest.mark.parametrize("given,expected", [
    ("euler a", "Euler a"), ("EULER A", "Euler a"), ("dpm++ 2m", "DPM++ 2M"), ("  DPM++   2M ", "DPM++ 2M"),
    ("k_euler_a", "Euler a"), ("k_euler_ancestral", "Euler a"), ("k_euler", "Euler"), ("k_lms", "LMS"),
    ("k_heun", "Heun"), ("k_dpm_2", "DPM2"), ("k_dpm_2_a", "DPM2 a"), ("k_dpmpp_2s_a", "DPM++ 2S a"),
    ("k_dpmpp_2m", "DPM++ 2M"), ("k_dpmpp_sde", "DPM++ SDE"), ("k_dpmpp_2m_sde", "DPM++ 2M SDE"),
    ("k_dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun"), ("k_dpmpp_3m_sde", "DPM++ 3M SDE"), ("ddim", "DDIM"),
    ("plms", "PLMS"), ("unipc", "UniPC"), ("k_lcm", "LCM"),
])
def test_aliases_and_case(given, expected):
    assert S.resolve(given)[0].name == expected


@pytest.mark.parametrize("legacy,sampler,schedule", [
    ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
    ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
    ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "Karras"),
    ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
    ("DPM++ 2M SDE Heun Karras", "DPM++ 2M SDE Heun", "Karras"),
    ("DPM++ 3M SDE Exponential", "DPM++ 3M SDE", "Exponential"),
    ("LMS Karras", "LMS", "Karras"),
    ("DPM2 a Karras", "DPM2 a", "Karras"),
    ("Euler SGM Uniform", "Euler", "SGM Uniform"),
    ("Euler sgm_uniform", "Euler", "SGM Uniform"),
    ("Euler a Uniform", "Euler a", "Uniform"),
    ("dpm++ 2m karras", "DPM++ 2M", "Karras"),
    ("k_dpmpp_2m_ka", "DPM++ 2M", "Karras"),
    ("k_dpmpp_sde_ka", "DPM++ SDE", "Karras"),
    ("k_dpmpp_2m_sde_heun_exp", "DPM++ 2M SDE Heun", "Exponential"),
    ("k_lms_ka", "LMS", "Karras"),
])
def test_legacy_names_split_into_sampler_and_schedule(legacy, sampler, schedule):
    spec, st = S.resolve(legacy)
    assert (spec.name, st.label) == (sampler, schedule)
    # as A1111's get_sampler_and_scheduler: the name's suffix wins over the scheduler field
    assert S.resolve(legacy, "Uniform")[1].label == schedule


def test_explicit_schedule_type_overrides_default():
    assert S.resolve("DPM++ 2M", "Exponential")[1].label == "Exponential"
    assert S.resolve("DPM++ 2M", "uniform")[1].label == "Uniform"
    assert S.resolve("Euler", "SGMUniform")[1].label == "SGM Uniform"


def test_unknown_sampler_error_names_value_and_lists_valid():
    with pytest.raises(UnknownSamplerError) as e:
        S.resolve("Eulr a")
    msg = str(e.value)
    assert "'Eulr a'" in msg and "DPM++ 2M" in msg and "Euler a" in msg and "UniPC" in msg
    assert isinstance(e.value, ValueError)
    assert "Euler a" in e.value.valid


def test_a1111_only_sampler_says_so():
    with pytest.raises(UnknownSamplerError, match="DPM adaptive.*does not offer"):
        S.resolve("DPM adaptive")


def test_unknown_schedule_type():
    with pytest.raises(UnknownSamplerError) as e:
        S.resolve("Euler", "Karas")
    assert "'Karas'" in str(e.value) and "Karras" in str(e.value) and "schedule type" in str(e.value)
    with pytest.raises(UnknownSamplerError, match="Polyexponential.*does not offer"):
        S.resolve("Euler", "Polyexponential")


def test_schedule_the_class_cannot_do_is_a_clear_error():
    # diffusers' EulerAncestralDiscreteScheduler has no use_karras_sigmas
    with pytest.raises(UnsupportedScheduleError) as e:
        S.resolve("Euler a", "Karras")
    assert isinstance(e.value, ValueError)
    assert "Euler a" in str(e.value) and "Karras" in str(e.value) and "Automatic" in str(e.value)
    with pytest.raises(ValueError):
        S.resolve("Euler a Karras")
    with pytest.raises(ValueError):
        S.build_scheduler(S.get_sampler("Euler a"), S.get_schedule_type("Karras"), SD15_CONFIG)
    # non-strict (pasted infotext): the sampler's default schedule
    assert S.resolve("Euler a", "Karras", strict=False)[1].label == "Automatic"
    assert "Karras" not in [s.label for s in S.supported_schedule_types(S.get_sampler("Euler a"))]


# -- schedules ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Euler", "DPM++ 2M", "LMS", "UniPC", "DPM++ SDE", "Heun", "DPM2"])
def test_karras_gives_k_diffusion_karras_sigmas(name):
    sig = _model_sigmas()
    expected = _k_diffusion_karras(10, sig[0], sig[-1])
    b = S.build_scheduler(*S.resolve(name, "Karras"), SD15_CONFIG)
    b.scheduler.set_timesteps(10)
    got = torch.unique_consecutive(b.scheduler.sigmas).numpy()  # second-order schedulers repeat sigmas
    if name in ("DPM++ SDE", "Heun", "DPM2"):
        got = b.scheduler.sigmas.numpy()[::2]  # step sigmas; the odd entries are midpoints/repeats
    np.testing.assert_allclose(got[:10], expected, rtol=1e-4)  # diffusers keeps alphas_cumprod in float32
    assert b.scheduler.sigmas[-1] == 0.0


def test_exponential_gives_k_diffusion_exponential_sigmas():
    sig = _model_sigmas()
    expected = np.exp(np.linspace(np.log(sig[-1]), np.log(sig[0]), 10))
    b = S.build_scheduler(*S.resolve("DPM++ 2M SDE"), SDXL_CONFIG)  # default Exponential
    b.scheduler.set_timesteps(10)
    np.testing.assert_allclose(b.scheduler.sigmas.numpy()[:10], expected, rtol=1e-4)


def test_k_samplers_use_a1111_sigma_range_not_leading_spacing():
    # A1111 (k-diffusion get_sigmas) starts at t=999 and ends at t=0 even though the config says "leading".
    b = S.build_scheduler(*S.resolve("Euler"), SD15_CONFIG)
    b.scheduler.set_timesteps(10)
    assert b.scheduler.timesteps[0] == 999 and b.scheduler.timesteps[-1] == 0
    sgm = S.build_scheduler(*S.resolve("Euler", "SGM Uniform"), SD15_CONFIG)
    sgm.scheduler.set_timesteps(10)
    assert sgm.scheduler.timesteps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    # DDIM keeps A1111's DDIM discretisation (leading, offset 1)
    ddim = S.build_scheduler(*S.resolve("DDIM"), SD15_CONFIG)
    ddim.scheduler.set_timesteps(10)
    assert ddim.scheduler.timesteps.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]


def test_model_config_karras_flag_does_not_leak_into_automatic():
    cfg = dict(SDXL_CONFIG, use_karras_sigmas=True)
    assert S.build_scheduler(*S.resolve("Euler"), cfg).scheduler.config.use_karras_sigmas is False
    assert S.build_scheduler(*S.resolve("Euler", "Karras"), cfg).scheduler.config.use_karras_sigmas is True


# -- determinism ----------------------------------------------------------------------------------------------------


def test_dpmpp_sde_deterministic_with_seed():
    spec, st = S.resolve("DPM++ SDE")
    a = _run(S.build_scheduler(spec, st, SD15_CONFIG, seed=42), n_steps=4)
    b = _run(S.build_scheduler(spec, st, SD15_CONFIG, seed=42), n_steps=4)
    c = _run(S.build_scheduler(spec, st, SD15_CONFIG, seed=43), n_steps=4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_dpmpp_sde_per_image_seeds():
    spec, st = S.resolve("DPM++ SDE")

    def run(seeds, x):
        sch = S.build_scheduler(spec, st, SD15_CONFIG, seed=seeds).scheduler
        sch.set_timesteps(6)
        x = x * sch.init_noise_sigma
        for t in sch.timesteps[:4]:
            x = sch.step(0.5 * sch.scale_model_input(x, t), t, x).prev_sample
        return x

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = run([7, 8], x)
    single = run([8], x[1:])
    torch.testing.assert_close(batch[1:], single)


def test_ancestral_step_noise_follows_generator():
    spec, st = S.resolve("Euler a")
    a = _run(S.build_scheduler(spec, st, SD15_CONFIG), seed=5)
    b = _run(S.build_scheduler(spec, st, SD15_CONFIG), seed=5)
    c = _run(S.build_scheduler(spec, st, SD15_CONFIG), seed=6)
    assert torch.equal(a, b) and not torch.allclose(a, c)


# -- API shapes -----------------------------------------------------------------------------------------------------


def test_list_samplers_api_shape():
    items = S.list_samplers_api()
    assert [i["name"] for i in items] == S.sampler_names()
    first = items[0]
    assert first == {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}
    euler_a = next(i for i in items if i["name"] == "Euler a")
    assert euler_a["aliases"] == ["k_euler_a", "k_euler_ancestral"]
    assert euler_a["options"] == {"uses_ensd": "True"}


def test_list_schedulers_api_shape():
    items = S.list_schedulers_api()
    assert [i["label"] for i in items][:5] == ["Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform"]
    karras = next(i for i in items if i["name"] == "karras")
    assert karras == {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0,
                      "need_inner_model": False}
    sgm = next(i for i in items if i["name"] == "sgm_uniform")
    assert sgm["aliases"] == ["SGMUniform"] and sgm["need_inner_model"] is True
    assert all(set(i) == {"name", "label", "aliases", "default_rho", "need_inner_model"} for i in items)
