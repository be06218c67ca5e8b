"""The engine's side of memory: A1111/Forge's flags and the "Memory" settings read into one policy, a plan made
for each job (modules/memory/planner.py) and carried out on the loaded model (modules/memory/offload.py), the
peak of the last job measured, and out-of-memory errors turned into a message that says what to try next."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from modules.memory import planner
from modules.memory.offload import PARTS, Offloader, module_bytes, offloader_of, split
from modules.memory.planner import JobSize, MemoryPlan, PartSize

log = logging.getLogger(__name__)

# The "Memory" setting's choices → planner modes (None: automatic).
SETTING_MODES = {"Automatic": None, "Everything on the GPU": "resident", "Model offload (--medvram)": "model",
                 "Sequential offload (--lowvram)": "sequential"}
STAGES = {"unet": "denoising", "vae": "VAE decode/encode", "text_encoder": "text encoding",
          "text_encoder_2": "text encoding", "text_encoder_3": "text encoding"}
ADVICE = {"model": "try --medvram (or Settings → Memory: Model offload)",
          "sequential": "try --lowvram (or Settings → Memory: Sequential offload)"}


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the model in use stays usable. The message names the stage and what to try."""


@dataclass(frozen=True)
class MemoryFlags:
    """The memory flags as A1111 and Forge users know them."""

    medvram: bool = False
    medvram_sdxl: bool = False
    lowvram: bool = False
    always_gpu: bool = False
    always_offload_from_vram: bool = False
    gpu_weights_mb: int = 0
    pin_shared_memory: bool = False
    auto_retry_oom: bool = False
    compile: bool = False

    @classmethod
    def from_args(cls, ns) -> "MemoryFlags":
        return cls(medvram=bool(getattr(ns, "medvram", False)), medvram_sdxl=bool(getattr(ns, "medvram_sdxl", False)),
                   lowvram=bool(getattr(ns, "lowvram", False)), always_gpu=bool(getattr(ns, "always_gpu", False)),
                   always_offload_from_vram=bool(getattr(ns, "always_offload_from_vram", False)),
                   gpu_weights_mb=int(getattr(ns, "gpu_weights_mb", 0) or 0),
                   pin_shared_memory=bool(getattr(ns, "pin_shared_memory", False)),
                   auto_retry_oom=bool(getattr(ns, "auto_retry_oom", False)),
                   compile=bool(getattr(ns, "compile", False)))


def parts_of(model) -> dict[str, torch.nn.Module]:
    return {name: getattr(model, name, None) for name in PARTS if getattr(model, name, None) is not None}


def part_sizes(model, block_fraction: int = 16) -> list[PartSize]:
    """Each part's weights and its largest block (as sequential offload splits it), from the modules' tensors
    (parked ones are meta tensors of the same shapes and dtypes, so the sizes read the same)."""
    sizes = []
    for name, part in parts_of(model).items():
        total = module_bytes(part)
        block = max((module_bytes(m, r) for m, r in split(part, max(1, total // block_fraction))), default=0)
        sizes.append(PartSize(name, total, block))
    return sizes


def job_of(req, element_bytes: int = 2) -> JobSize:
    """The memory-relevant size of a generation request (the hires pass's size when it is larger)."""
    width, height = int(getattr(req, "width", 512) or 512), int(getattr(req, "height", 512) or 512)
    if getattr(req, "enable_hr", False):
        scale = max(1.0, float(getattr(req, "hr_scale", 1.0) or 1.0))
        width = max(width, int(getattr(req, "hr_resize_x", 0) or width * scale))
        height = max(height, int(getattr(req, "hr_resize_y", 0) or height * scale))
    return JobSize(width=width, height=height, batch=int(getattr(req, "batch_size", 1) or 1),
                   cfg=float(getattr(req, "cfg_scale", 7.0) or 0) != 1, element_bytes=element_bytes)


class MemoryManager:
    """Plans and applies where a model's weights live for each job; remembers the last plan and peak."""

    def __init__(self, flags: MemoryFlags, device: torch.device, settings=None):
        self.flags, self.device, self.settings = flags, torch.device(device), settings
        self.last_plan: MemoryPlan | None = None
        self.last_peak: int | None = None
        self.retry_mode: str | None = None  # set for one job by the out-of-memory retry

    # -- the policy --------------------------------------------------------------------------------------------

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def forced(self, model) -> tuple[str | None, str]:
        """The mode the user asked for (flag or setting) and why, else (None, "")."""
        if self.retry_mode:
            return self.retry_mode, "retried after running out of memory"
        setting = str(self._setting("memory_mode", "Automatic") or "Automatic")
        if SETTING_MODES.get(setting):
            return SETTING_MODES[setting], f"Settings → Memory: {setting}"
        if not self.on_gpu:
            return None, ""
        f = self.flags
        if f.lowvram:
            return "sequential", "--lowvram"
        if f.medvram:
            return "model", "--medvram"
        if f.medvram_sdxl and getattr(model, "is_sdxl", False):
            return "model", "--medvram-sdxl"
        if f.always_offload_from_vram:
            return "model", "--always-offload-from-vram"
        if f.always_gpu:
            return "resident", "--always-gpu"
        return None, ""

    def weights_budget(self) -> int | None:
        mb = int(self._setting("gpu_weights_mb", 0) or 0) or int(self.flags.gpu_weights_mb or 0)
        return mb << 20 if mb > 0 and self.on_gpu else None

    def device_free(self) -> int | None:
        """Bytes this process can still allocate on the device: its free memory plus our allocator's cached blocks,
        within a per-process cap (`set_per_process_memory_fraction`); None off the GPU."""
        if not self.on_gpu:
            return None
        free, total = torch.cuda.mem_get_info(self.device)
        allocated, reserved = torch.cuda.memory_allocated(self.device), torch.cuda.memory_reserved(self.device)
        fraction = torch.cuda.get_per_process_memory_fraction(self.device)
        return max(0, min(free + reserved - allocated, int(fraction * total) - allocated))

    def free_bytes(self, model) -> int | None:
        """Device memory this model may use: what the device has free plus what the model holds there now."""
        free = self.device_free()
        if free is None:
            return None
        off = offloader_of(model)
        held = off.resident_bytes() if off is not None else sum(
            module_bytes(p) for p in parts_of(model).values() if _on(p, self.device))
        return free + held

    def plan(self, model, job: JobSize, free: int | None | str = "device") -> MemoryPlan:
        """The plan for `job` on `model` with the device's free memory (or `free` bytes, for a what-if)."""
        forced, reason = self.forced(model)
        unet = getattr(model, "unet", None)
        config = getattr(unet, "config", None)
        widths = getattr(config, "block_out_channels", None)
        first = int(widths[0]) if widths else int(getattr(config, "num_attention_heads", 24) or 24) * int(
            getattr(config, "attention_head_dim", 128) or 128) // 4
        free = self.free_bytes(model) if free == "device" else free
        return planner.plan(part_sizes(model), job, free, denoiser="unet", first_width=first,
                            forced=forced, forced_reason=reason, weights_budget=self.weights_budget(),
                            force_vae_tiling=str(self._setting("vae_tiling", "Automatic")) == "Always")

    # -- carrying it out ---------------------------------------------------------------------------------------

    def prepare(self, model, job: JobSize) -> MemoryPlan:
        """Plan `job` on `model` and put its weights where the plan says (a no-op when nothing changes)."""
        plan = self.plan(model, job)
        self.apply(model, plan.mode)
        self.apply_vae_tiling(model, plan)
        self.apply_compile(model, plan)
        if plan.mode != getattr(self.last_plan, "mode", "resident") or plan.vae_tiled:
            log.info("Memory: %s", plan.describe())
        self.last_plan = plan
        if self.on_gpu:
            torch.cuda.reset_peak_memory_stats(self.device)
        return plan

    def apply_compile(self, model, plan: MemoryPlan) -> None:
        """--compile: the denoiser compiled in place (torch.compile, one graph per picture size, cached) while its
        weights stay on the device; an offloading plan runs it uncompiled (its hooks move weights mid-call)."""
        unet = getattr(model, "unet", None)
        if not self.flags.compile or unet is None or not hasattr(unet, "_compiled_call_impl"):
            return
        compiled = unet._compiled_call_impl is not None
        if plan.mode == "resident" and not compiled:
            log.warning("--compile: the first picture of each size compiles the denoiser first (up to a minute or "
                        "more); later ones run faster")
            unet.compile()
        elif plan.mode != "resident" and compiled:
            log.info("--compile: %s moves weights during the call; the denoiser runs uncompiled",
                     planner.MODE_NAMES[plan.mode])
            unet._compiled_call_impl = None

    def apply_vae_tiling(self, model, plan: MemoryPlan) -> None:
        """Tiled VAE decode/encode when the plan says the whole picture would not fit (or the setting says
        Always); "Never" keeps it whole."""
        vae = getattr(model, "vae", None)
        if vae is not None and hasattr(vae, "use_tiling"):
            tiled = plan.vae_tiled and str(self._setting("vae_tiling", "Automatic")) != "Never"
            vae.use_tiling = tiled
            if tiled:  # diffusers' tiled decode/encode, at the plan's tile size (its overlap, blended)
                scale = int(getattr(model, "vae_scale_factor", 8) or 8)
                vae.tile_sample_min_size = plan.vae_tile
                vae.tile_latent_min_size = plan.vae_tile // scale
                vae.tile_overlap_factor = planner.TILE_OVERLAP

    def swap(self) -> tuple[bool, bool]:
        """(pinned host memory, prefetch on a side stream): Forge's Swap Location and Swap Method."""
        pin = self.flags.pin_shared_memory or str(self._setting("forge_pin_shared_memory", "CPU")) == "Shared"
        return pin, str(self._setting("forge_async_loading", "Queue")) == "Async"

    def apply(self, model, mode: str) -> None:
        parts = parts_of(model)
        off = offloader_of(model)
        pin, prefetch = self.swap()
        if off is not None and off.mode == mode and off.parts == parts and (off.pin, off.prefetch) == (
                pin and self.on_gpu, prefetch and mode == "sequential"):
            return
        if off is not None:
            off.release()
            model.extra.pop("offloader", None)
        if mode == "resident":
            for part in parts.values():
                if not _on(part, self.device):
                    part.to(self.device)
            return
        model.extra["offloader"] = Offloader(parts, mode, self.device, pin=pin, prefetch=prefetch)

    def finish(self) -> None:
        """After a job: its peak device memory (shown under the pictures)."""
        self.last_peak = torch.cuda.max_memory_allocated(self.device) if self.on_gpu else None

    def summary(self) -> str:
        """One line for the page: the mode in effect and the last job's peak."""
        if self.last_plan is None or (not self.on_gpu and self.last_plan.mode == "resident"):
            return ""  # on the CPU the weights are simply in RAM: nothing to say
        text = f"Memory: {planner.MODE_NAMES[self.last_plan.mode]}"
        if self.last_plan.mode == "sequential" and self.swap()[1]:
            text += ", async swap"
        if self.last_plan.vae_tiled:
            text += f", VAE in {self.last_plan.vae_tiles} tiles"
        if self.last_peak is not None:
            text += f"; peak {self.last_peak / planner.GIB:.2f} GiB"
        return text

    def out_of_memory(self, model, error: BaseException) -> OutOfMemory:
        """The message for an out-of-memory error: where it happened and the next mode to try."""
        off = offloader_of(model)
        mode = off.mode if off is not None else "resident"
        stage = STAGES.get(stage_of(error, model) or getattr(off, "last_part", ""), "generation")
        nxt = planner.next_mode(mode)
        advice = ADVICE.get(nxt, "try a smaller size or batch") if nxt else "try a smaller size or batch"
        if self.on_gpu:
            torch.cuda.empty_cache()
        return OutOfMemory(f"out of GPU memory at {stage} ({planner.MODE_NAMES[mode]}); {advice}")

    def _setting(self, name: str, default):
        try:
            return self.settings.get(name, default) if self.settings is not None else default
        except Exception:  # noqa: BLE001 - an unknown setting reads as its default
            return default


def stage_of(error: BaseException, model) -> str:
    """The part (``unet``, ``vae``, …) that was computing when `error` was raised: the innermost frame of its
    traceback that runs a method of one of the model's parts."""
    parts = {id(part): name for name, part in parts_of(model).items()}
    found, tb = "", error.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in parts:
            found = parts[id(owner)]
        tb = tb.tb_next
    return found


def _on(module: torch.nn.Module, device: torch.device) -> bool:
    p = next(module.parameters(), None)
    return p is None or (p.device.type == device.type and (device.index is None or p.device.index == device.index))
