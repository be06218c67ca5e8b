"""Memory modes (modules/memory/): the plan from numbers alone, and the offload that carries it out, proved on CPU
by a residency meter: the parts' weights parked as `meta` tensors (as accelerate's hooks do) show exactly which
bytes were on the execution device at every layer of a whole txt2img, and the picture stays bit-identical."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from modules.memory import planner
from modules.memory.manager import MemoryFlags, MemoryManager, OutOfMemory, parts_of
from modules.memory.offload import offloader_of
from modules.memory.planner import JobSize, PartSize

GB = 10**9
GIB = 1 << 30

# Real sizes (bytes) of the parts in fp16, and their largest block as sequential offload splits them.
SDXL = [PartSize("text_encoder", int(0.246 * GB), int(0.05 * GB)),
        PartSize("text_encoder_2", int(1.39 * GB), int(0.16 * GB)),
        PartSize("unet", int(5.14 * GB), int(0.33 * GB)),
        PartSize("vae", int(0.167 * GB), int(0.03 * GB))]
FLUX_Q4 = [PartSize("text_encoder", int(0.246 * GB), int(0.05 * GB)),  # CLIP-L
           PartSize("text_encoder_2", int(9.52 * GB), int(0.4 * GB)),  # T5-XXL fp16
           PartSize("unet", int(6.8 * GB), int(0.12 * GB)),  # Flux transformer, Q4_0 GGUF
           PartSize("vae", int(0.168 * GB), int(0.03 * GB))]
FLUX_WIDTH = 24 * 128 // 4  # what the manager takes for a transformer of 24 heads × 128


@pytest.mark.parametrize("free_gib, mode, peak_gib", [
    (24, "resident", (8.0, 10.5)),
    (8, "model", (6.0, 7.5)),
    (4, "sequential", (2.0, 3.5)),
])
def test_sdxl_1024_plan_by_free_memory(free_gib, mode, peak_gib):
    plan = planner.plan(SDXL, JobSize(1024, 1024), free_gib * GIB)
    assert plan.mode == mode, plan
    assert peak_gib[0] * GB <= plan.predicted_peak <= peak_gib[1] * GB, plan.predicted_peak / GB
    assert plan.predicted_peak * 1.1 <= free_gib * GIB and not plan.vae_tiled
    assert f"of {free_gib:.1f} GiB free" in plan.describe()


def test_flux_q4_with_8_gb_streams_blocks_and_a_big_picture_tiles_the_vae():
    plan = planner.plan(FLUX_Q4, JobSize(1024, 1024, cfg=False), 8 * GIB, first_width=FLUX_WIDTH)
    assert plan.mode == "sequential"  # T5 alone (9.5 GB) does not fit: part by part is not enough
    assert plan.peaks["model"] > 8 * GIB and plan.predicted_peak < 4 * GB
    big = planner.plan(SDXL, JobSize(2048, 2048), 4 * GIB)
    assert big.mode == "sequential" and big.vae_tiled and "exceed" in big.reason
    assert planner.plan(SDXL, JobSize(1024, 1024), 24 * GIB, force_vae_tiling=True).vae_tiled


def test_flags_budget_and_cpu():
    forced = planner.plan(SDXL, JobSize(512, 512), 24 * GIB, forced="sequential", forced_reason="--lowvram")
    assert forced.mode == "sequential" and "--lowvram" in forced.describe()
    # Forge's GPU Weights: the weights alone against the budget
    assert planner.plan(SDXL, JobSize(512, 512), 24 * GIB, weights_budget=8 * GIB).mode == "resident"
    assert planner.plan(SDXL, JobSize(512, 512), 24 * GIB, weights_budget=6 * GIB).mode == "model"
    assert planner.plan(SDXL, JobSize(512, 512), 24 * GIB, weights_budget=2 * GIB).mode == "sequential"
    assert planner.plan(SDXL, JobSize(1024, 1024), None).mode == "resident"  # CPU/MPS: system memory
    assert [planner.next_mode(m) for m in planner.MODES] == ["model", "sequential", None]


def test_flags_as_a1111_and_forge_users_know_them():
    class SDXLModel:
        is_sdxl = True

    class SD1Model:
        is_sdxl = False

    cuda = torch.device("cuda")
    assert MemoryManager(MemoryFlags(lowvram=True), cuda).forced(SD1Model())[0] == "sequential"
    assert MemoryManager(MemoryFlags(medvram=True), cuda).forced(SD1Model())[0] == "model"
    sdxl_only = MemoryManager(MemoryFlags(medvram_sdxl=True), cuda)
    assert sdxl_only.forced(SDXLModel())[0] == "model" and sdxl_only.forced(SD1Model())[0] is None
    assert MemoryManager(MemoryFlags(always_offload_from_vram=True), cuda).forced(SD1Model())[0] == "model"
    assert MemoryManager(MemoryFlags(always_gpu=True), cuda).forced(SD1Model())[0] == "resident"
    assert MemoryManager(MemoryFlags(gpu_weights_mb=3000), cuda).weights_budget() == 3000 << 20
    # on the CPU the flags change nothing; the Memory setting (an explicit choice in the UI) still applies
    assert MemoryManager(MemoryFlags(lowvram=True), torch.device("cpu")).forced(SD1Model())[0] is None
    settings = {"memory_mode": "Model offload (--medvram)"}
    assert MemoryManager(MemoryFlags(lowvram=True), cuda, settings).forced(SD1Model()) == (
        "model", "Settings → Memory: Model offload (--medvram)")


def test_offloaded_model_loads_into_host_memory(engine):
    engine.models.device_config = type(engine.models.device_config)(
        device=torch.device("cuda"), dtype=torch.float16, vae_dtype=torch.float16)
    engine.models.memory = MemoryManager(MemoryFlags(lowvram=True), torch.device("cuda"))
    assert engine.models._load_config().device.type == "cpu"  # read to RAM; the plan brings in what fits
    engine.models.memory = MemoryManager(MemoryFlags(), torch.device("cuda"))
    assert engine.models._load_config().device.type == "cuda"
    info = engine.registry.get("sdxl.safetensors")
    size = info.filename.stat().st_size
    engine.models.memory.device_free = lambda: size  # the file would not fit with room to spare: to RAM first
    assert engine.models._load_config(info).device.type == "cpu"
    engine.models.memory.device_free = lambda: size * 4
    assert engine.models._load_config(info).device.type == "cuda"
    engine.models.memory = MemoryManager(MemoryFlags(always_gpu=True), torch.device("cuda"))
    assert engine.models._load_config(info).device.type == "cuda"  # --always-gpu: never to RAM


# ---------------------------------------------------------------------------------------------------------------
# The residency meter: whole generations on the tiny models


class Meter:
    """After every layer's forward: the bytes of the parts' parameters and buffers that are not `meta`, overall
    (`peak`) and while each part computes (`during[part]`)."""

    def __init__(self, model):
        self.parts = parts_of(model)
        self.modules = [m for part in self.parts.values() for m in part.modules()]
        # each module's own parameter and buffer dicts (the same dict objects whatever the offloader puts in them)
        self.slots = [d for m in self.modules for d in (m._parameters, m._buffers)]
        self.peak = 0
        self.during: dict[str, int] = {}
        self.hooks = [m.register_forward_hook(lambda *_, name=name: self.sample(name))
                      for name, part in self.parts.items() for m in part.modules() if not list(m.children())]

    def sample(self, name: str):
        now = 0
        for slot in self.slots:
            for t in slot.values():
                if t is not None and not t.is_meta:
                    now += t.numel() * t.element_size()
        self.peak = max(self.peak, now)
        self.during[name] = max(self.during.get(name, 0), now)

    def remove(self):
        for h in self.hooks:
            h.remove()


REQ = dict(prompt="a red cat", negative_prompt="blue", steps=3, width=64, height=64, seed=7, cfg_scale=5,
           do_not_save_samples=True, do_not_save_grid=True)


def _metered(engine, setting: str, req: dict):
    """(picture, meter, offloader) of `req` run with the Memory setting `setting`."""
    model = engine.models.get(req.get("override_settings", {}).get("sd_model_checkpoint"))
    meter = Meter(model)  # its hooks run before the offloader's own (registered when the job plans)
    engine.settings.set("memory_mode", setting)
    try:
        picture = np.array(engine.txt2img(req).images[0])
    finally:
        meter.remove()
        engine.settings.set("memory_mode", "Automatic")
    return picture, meter, offloader_of(model)


def _sizes(model) -> dict[str, int]:
    return {name: sum(t.numel() * t.element_size() for t in [*p.parameters(), *p.buffers()])
            for name, p in parts_of(model).items()}


@pytest.fixture
def flux_engine(engine, data_dir):
    from tests import tiny_flow_models as tfm

    tfm.write_all_in_one(tfm.build_flux(), data_dir / "models" / "Stable-diffusion" / "flux.safetensors")
    engine.registry.refresh()
    return engine


@pytest.mark.parametrize("family", ["sd1", "sdxl", "flux"])
@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_offload_keeps_only_a_part_or_a_block_resident_and_the_picture_identical(family, engine, request):
    if family == "flux":
        engine = request.getfixturevalue("flux_engine")
    name = {"sd1": "sd1.safetensors", "sdxl": "sdxl.safetensors", "flux": "flux.safetensors"}[family]
    req = dict(REQ, override_settings={"sd_model_checkpoint": name}, **({"cfg_scale": 1} if family == "flux" else {}))
    resident, meter, off = _metered(engine, "Everything on the GPU", req)
    sizes = _sizes(engine.models.current)
    total, largest = sum(sizes.values()), max(sizes.values())
    assert off is None and meter.peak == total

    model_off, meter, off = _metered(engine, "Model offload (--medvram)", req)
    assert off.mode == "model" and np.array_equal(model_off, resident)
    assert meter.peak <= largest * 1.10, (meter.peak, sizes)  # one part at a time
    assert engine.memory.last_plan.mode == "model" and "model offload" in engine.memory.summary()

    seq, meter, off = _metered(engine, "Sequential offload (--lowvram)", req)
    block = max(u.nbytes for u in off.units)
    assert off.mode == "sequential" and np.array_equal(seq, resident)
    assert meter.peak <= block * 1.10, (meter.peak, block)  # one block at a time
    denoiser_block = max(u.nbytes for u in off.units_of["unet"])
    assert meter.during["unet"] <= denoiser_block * 1.10 < sizes["unet"] / 4, (meter.during, denoiser_block)

    again = np.array(engine.txt2img(req).images[0])  # back to everything on the device: same picture
    assert offloader_of(engine.models.current) is None and np.array_equal(again, resident)


def test_lora_under_offload_patches_the_stored_weights(engine, data_dir):
    from tests.test_lora import Builder

    model = engine.models.get("sd1.safetensors")
    b = Builder(model)
    b.lora("unet:down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    b.lora("te1:encoder.layers.0.self_attn.q_proj")
    b.save(data_dir / "models" / "Lora" / "tint.safetensors")
    req = dict(REQ, prompt="a red cat <lora:tint:0.9>")
    plain = np.array(engine.txt2img(REQ).images[0])
    with_lora = np.array(engine.txt2img(req).images[0])
    assert not np.array_equal(with_lora, plain)
    for setting in ("Model offload (--medvram)", "Sequential offload (--lowvram)"):
        engine.settings.set("memory_mode", setting)
        assert np.array_equal(np.array(engine.txt2img(req).images[0]), with_lora), setting
        assert np.array_equal(np.array(engine.txt2img(REQ).images[0]), plain), setting  # restored in the store


def _oom_once(model, monkeypatch):
    calls = {"n": 0}
    real = type(model.unet).forward

    def forward(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *a, **kw)

    monkeypatch.setattr(type(model.unet), "forward", forward)
    return calls


def test_out_of_memory_names_the_stage_and_the_next_mode_and_the_model_stays_usable(engine, monkeypatch):
    model = engine.models.get("sd1.safetensors")
    _oom_once(model, monkeypatch)
    with pytest.raises(OutOfMemory) as e:
        engine.txt2img(REQ)
    assert str(e.value) == ("out of GPU memory at denoising (everything on the GPU); try --medvram "
                            "(or Settings → Memory: Model offload)")
    assert engine.txt2img(REQ).images  # nothing broken: the next job runs


def test_auto_retry_oom_runs_the_job_again_in_the_next_mode(engine, monkeypatch):
    engine.memory.flags = MemoryFlags(auto_retry_oom=True)
    model = engine.models.get("sd1.safetensors")
    expected = np.array(engine.txt2img(REQ).images[0])
    calls = _oom_once(model, monkeypatch)
    result = engine.txt2img(REQ)
    assert calls["n"] > 1 and engine.memory.last_plan.mode == "model"
    assert np.array_equal(np.array(result.images[0]), expected)
    assert engine.memory.retry_mode is None  # only that job


@pytest.mark.slow  # a 576² decode on the CPU, ~2 s
def test_a_decode_too_big_for_the_budget_is_tiled_as_planned_without_a_seam(engine):
    import torch.nn.functional as F

    from modules import processing

    model = engine.models.get("sd1.safetensors")
    # 576²: over diffusers' 512 px tile, so 2×2 tiles; whole, its decode does not fit 1.5 GiB, a tile's does
    plan = engine.memory.plan(model, JobSize(576, 576, element_bytes=4), free=int(1.5 * GIB))
    assert plan.vae_tiled and plan.vae_tiles == 4 and plan.mode == "resident"  # weights fit; the decode does not
    engine.memory.apply_vae_tiling(model, plan)
    calls = []
    hook = model.vae.decoder.register_forward_pre_hook(lambda *_: calls.append(1))
    smooth = F.interpolate(torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(0)), size=(72, 72),
                           mode="bicubic", align_corners=False)  # a smooth picture: a seam would stand out
    try:
        image = processing.decode(model, smooth * model.vae.config.scaling_factor)[0]
    finally:
        hook.remove()
        engine.memory.apply_vae_tiling(model, engine.memory.plan(model, JobSize(64, 64)))
    assert image.shape == (3, 576, 576) and len(calls) == plan.vae_tiles
    # the colour step between neighbouring columns/rows where tiles meet vs everywhere: blended tiles leave no
    # step (here blended: 0.6x and 1.5x the median step; unblended ones measured 5.7x and 4.1x)
    border = plan.vae_tile - int(plan.vae_tile * planner.TILE_OVERLAP)
    for steps in ((image[:, :, 1:] - image[:, :, :-1]).abs().mean(dim=(0, 1)),
                  (image[:, 1:, :] - image[:, :-1, :]).abs().mean(dim=(0, 2))):
        assert steps[border - 1] <= 2 * steps.median(), (steps[border - 1], steps.median())
    assert not model.vae.use_tiling  # a small job decodes whole again


@pytest.mark.parametrize("choice", ["float8-e4m3fn", "float8-e5m2", "bfloat16", "float16"])
@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_diffusion_in_low_bits_keeps_the_denoiser_in_fp8(engine, choice):
    from modules.memory.offload import module_bytes

    req = dict(REQ, override_settings={"sd_model_checkpoint": "sdxl.safetensors"})
    full = np.array(engine.txt2img(req).images[0]).astype(float)
    before = module_bytes(engine.models.current.unet)
    engine.settings.set("forge_unet_storage_dtype", choice)  # Forge's key: its API clients set the same
    low = np.array(engine.txt2img(req).images[0]).astype(float)
    model = engine.models.current
    assert model.unet.storage_dtype == {"float8-e4m3fn": torch.float8_e4m3fn, "float8-e5m2": torch.float8_e5m2,
                                        "bfloat16": torch.bfloat16, "float16": torch.float16}[choice]
    assert module_bytes(model.unet) <= before * 0.55  # ≥ 45 % less (fp32 → fp8 here: 75 %; → bf16: 50 %)
    # the same picture up to fp8's rounding: on average within 4 of 255, nowhere more than 32
    assert np.abs(full - low).mean() <= 4 and np.abs(full - low).max() <= 32
    engine.settings.set("memory_mode", "Sequential offload (--lowvram)")  # fp8 blocks streamed: the same picture
    assert np.array_equal(np.array(engine.txt2img(req).images[0]).astype(float), low)
    engine.settings.set("memory_mode", "Automatic")
    engine.settings.set("forge_unet_storage_dtype", "Automatic")  # read again from the file: exactly as before
    assert np.array_equal(np.array(engine.txt2img(req).images[0]).astype(float), full)


def test_split_attention_and_channels_last_flags_are_applied(data_dir):
    from modules import cmd_args
    from modules.engine import Engine

    def engine_with(*flags):
        ns = cmd_args.parse_args(["--data-dir", str(data_dir), "--skip-install", *flags], env={})
        return Engine.from_args(ns)

    req = dict(REQ, override_settings={"sd_model_checkpoint": "sd1.safetensors"})
    plain_engine = engine_with()
    plain = np.array(plain_engine.txt2img(req).images[0]).astype(int)
    low = engine_with("--opt-split-attention", "--opt-channelslast")
    sliced = np.array(low.txt2img(req).images[0]).astype(int)
    unet = low.models.current.unet
    assert {type(p).__name__ for p in unet.attn_processors.values()} == {"SlicedAttnProcessor"}
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(plain - sliced).max() <= 2  # the same attention, computed in slices
    assert {type(p).__name__ for p in plain_engine.models.current.unet.attn_processors.values()} == {
        "AttnProcessor2_0"}
    disabled = engine_with("--opt-split-attention", "--disable-opt-split-attention")
    assert disabled.device_config.attention == "sdpa"


def test_a_control_lora_is_built_and_guides_under_offload(engine, data_dir):
    """A Control-LoRA is made from the checkpoint's own UNet weights: with those parked, it is built from the
    stored ones, and the guided picture is the resident one."""
    from PIL import Image
    from safetensors.torch import save_file

    from tests import tiny_controlnets as tc

    model = engine.models.get("sd1.safetensors")
    folder = engine.paths.controlnet_dirs[0]
    folder.mkdir(parents=True, exist_ok=True)
    net = tc.build_controlnet(model.unet, 5)
    save_file(tc.control_lora_state_dict(net, model.unet), str(folder / "control-lora-canny-rank64.safetensors"))
    square = Image.new("RGB", (64, 64), "black")
    square.paste((255, 255, 255), (16, 16, 48, 48))
    unit = {"image": square, "module": "canny", "model": "control-lora-canny-rank64", "processor_res": 64,
            "weight": 1.5}
    req = dict(REQ, alwayson_scripts={"controlnet": {"args": [unit]}})
    plain = np.array(engine.txt2img(REQ).images[0])
    resident = np.array(engine.txt2img(req).images[0])
    assert not np.array_equal(plain, resident)
    engine.controlnets._loaded.clear()  # built again, this time from parked weights
    engine.settings.set("memory_mode", "Sequential offload (--lowvram)")
    assert np.array_equal(np.array(engine.txt2img(req).images[0]), resident)


def test_compile_flag_compiles_the_resident_denoiser_only(engine):
    from modules.memory.planner import MemoryPlan

    engine.memory.flags = MemoryFlags(compile=True)
    model = engine.models.get("sd1.safetensors")
    engine.memory.apply_compile(model, MemoryPlan(mode="resident", predicted_peak=0, free=None))
    assert model.unet._compiled_call_impl is not None  # compiled lazily: the first call per size builds the graph
    engine.memory.apply_compile(model, MemoryPlan(mode="sequential", predicted_peak=0, free=None))
    assert model.unet._compiled_call_impl is None  # offload hooks move weights mid-call: run it eagerly


def test_memory_settings_change_what_they_say(engine):
    """Settings → Memory: GPU Weights bounds the weights on a GPU; VAE tiling Always/Never overrides the plan;
    Low bits for the text encoders keeps them in fp8 too."""
    from modules.memory.offload import module_bytes

    cuda = MemoryManager(MemoryFlags(gpu_weights_mb=8000), torch.device("cuda"), engine.settings)
    engine.settings.set("gpu_weights_mb", 3000)  # the setting wins over the flag
    assert cuda.weights_budget() == 3000 << 20
    assert MemoryManager(MemoryFlags(), torch.device("cpu"), engine.settings).weights_budget() is None  # GPU only

    model = engine.models.get("sd1.safetensors")
    for choice, tiled in (("Always", True), ("Never", False), ("Automatic", False)):
        engine.settings.set("vae_tiling", choice)
        engine.txt2img(REQ)
        assert model.vae.use_tiling is tiled, choice
    engine.settings.set("vae_tiling", "Never")  # even a plan that tiles decodes whole
    plan = engine.memory.plan(model, JobSize(768, 768, element_bytes=4), free=int(1.5 * GIB))
    engine.memory.apply_vae_tiling(model, plan)
    assert plan.vae_tiled and not model.vae.use_tiling

    te_before = module_bytes(engine.models.get("sdxl.safetensors").text_encoder_2)
    engine.settings.set("forge_unet_storage_dtype", "float8-e4m3fn")
    engine.settings.set("low_bits_text_encoders", True)
    xl = engine.models.get("sdxl.safetensors")
    assert xl.text_encoder_2.storage_dtype == torch.float8_e4m3fn
    assert module_bytes(xl.text_encoder_2) < te_before


def test_pinned_memory_and_sdp_flags_reach_what_acts_on_a_gpu(engine, monkeypatch):
    """--pin-shared-memory goes to the offloader (it pins only on CUDA), --opt-sdp-no-mem-attention turns off the
    memory-efficient SDPA kernels on a GPU."""
    from modules import devices
    from modules.memory import manager as manager_mod

    seen = {}
    real = manager_mod.Offloader
    monkeypatch.setattr(manager_mod, "Offloader", lambda *a, **kw: seen.update(kw) or real(*a, **kw))
    engine.memory.flags = MemoryFlags(pin_shared_memory=True)
    model = engine.models.get("sd1.safetensors")
    engine.memory.apply(model, "sequential")
    assert seen == {"pin": True, "prefetch": False} and offloader_of(model).pin is False  # no CUDA: plain memory
    engine.memory.apply(model, "resident")

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cuda, "enable_mem_efficient_sdp", lambda on: calls.append(on))
    assert devices.from_flags(sdp_no_mem=True).device.type == "cuda" and calls == [False]
    devices.from_flags()
    assert calls == [False]  # without the flag the kernels stay as they are


def test_async_swap_prefetches_the_next_block_in_the_order_it_ran(engine, monkeypatch):
    """Swap Method: Async (Forge's setting): under sequential offload each block, once the order is known from a
    first job, is already on its way when it is needed; at most two blocks are on the device; same picture."""
    from modules.memory import offload as offload_mod

    req = dict(REQ, override_settings={"sd_model_checkpoint": "sd1.safetensors"})
    resident = np.array(engine.txt2img(req).images[0])
    engine.settings.set("forge_async_loading", "Async")
    engine.settings.set("forge_pin_shared_memory", "Shared")
    engine.settings.set("memory_mode", "Sequential offload (--lowvram)")
    try:
        first = np.array(engine.txt2img(req).images[0])  # learns the order
        off = offloader_of(engine.models.current)
        assert off.prefetch and "block by block), async swap" in engine.memory.summary()
        counts = {"started": 0, "used": 0, "brought": 0}
        peak = [0]
        real_start, real_finish, real_bring = off._prefetcher.start, off._prefetcher.finish, off.bring
        monkeypatch.setattr(off._prefetcher, "start", lambda stored: counts.__setitem__(
            "started", counts["started"] + 1) or real_start(stored))
        monkeypatch.setattr(off._prefetcher, "finish", lambda pending: counts.__setitem__(
            "used", counts["used"] + 1) or real_finish(pending))

        def bring(unit):
            counts["brought"] += not unit.on_device
            real_bring(unit)
            peak[0] = max(peak[0], off.resident_bytes())

        monkeypatch.setattr(off, "bring", bring)  # the hooks call it through the instance
        second = np.array(engine.txt2img(req).images[0])
    finally:
        for name, value in (("forge_async_loading", "Queue"), ("forge_pin_shared_memory", "CPU"),
                            ("memory_mode", "Automatic")):
            engine.settings.set(name, value)
    assert np.array_equal(first, resident) and np.array_equal(second, resident)
    assert counts["brought"] > 20 and counts["used"] >= 0.9 * counts["brought"], counts  # nearly all were ahead
    assert counts["started"] - counts["used"] <= 2, counts  # hardly any copy made for nothing
    block = max(u.nbytes for u in off.units)
    assert peak[0] <= 2 * block * 1.10, (peak[0], block)  # the one computing and the one on its way
    assert offload_mod.Prefetcher(torch.device("cpu")).stream is None  # a side stream only on CUDA


def test_sixteen_bit_storage_leaves_a_model_that_computes_in_sixteen_bits_alone():
    from types import SimpleNamespace

    from modules.models.lowbit import apply_low_bits

    unet = torch.nn.Linear(4, 4).half()
    apply_low_bits(SimpleNamespace(unet=unet, dtype=torch.float16), "float16")
    assert getattr(unet, "storage_dtype", None) is None and unet.weight.dtype == torch.float16  # nothing to save
