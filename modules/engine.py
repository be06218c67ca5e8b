"""The backend service the UI, the HTTP API and the CLI share: settings, models, one generation at a time.

Created once at start-up from the parsed flags; everything it holds is passed in, nothing is global.
"""
from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules import cpu_threads, devices, face_restoration, images, processing, prompt_limits
from modules.hashes import HashCache
from modules.history import HistoryStore
from modules.jobs import JobQueue, JobState
from modules.models.manager import ModelManager
from modules.models.registry import CheckpointRegistry
from modules.networks.embeddings import EmbeddingDatabase
from modules.networks.hypernetworks import HypernetworkRegistry
from modules.styles import StyleDatabase
from modules.networks.lora import LoraRegistry
from modules.paths import Paths
from modules.processing import GenerationResult, OutputDirs, ProcessingContext
from modules.request_types import GenerationRequest, Img2ImgRequest, RequestError, Txt2ImgRequest
from modules.settings import Settings
from modules.upscaling import UpscalerRegistry
from modules.controlnet.models import ControlNetLibrary
from modules.memory.manager import MemoryFlags, MemoryManager, OutOfMemory, job_of

# a request's override_settings of these name and write its files (for that job, as the output folders do)
_SAVE_OPTIONS = ("samples_filename_pattern", "save_images_add_number", "grid_extended_filename", "jpeg_quality",
                 "webp_lossless", "export_for_4chan", "img_downscale_threshold", "target_side_length")

log = logging.getLogger(__name__)


def _sweep_temp_files(paths: Paths) -> None:
    """Hidden temp files of writes a kill -9 interrupted (config.json, images, trained files) go at start."""
    from modules import fileio

    shallow = {Path(paths.config_file).parent, Path(paths.cache_file).parent, Path(paths.styles_file).parent}
    removed = fileio.sweep_stale_temp_files(shallow, recursive=False)
    removed += fileio.sweep_stale_temp_files([paths.outputs_dir, paths.models_dir, paths.embeddings_dir])
    if removed:
        log.info("Removed %d unfinished temporary file(s) left by an earlier run", len(removed))


@dataclass
class Engine:
    paths: Paths
    settings: Settings
    device_config: devices.DeviceConfig
    registry: CheckpointRegistry
    models: ModelManager
    state: JobState
    queue: JobQueue
    loras: Any = None  # modules.networks.lora.LoraRegistry (models/Lora + models/LyCORIS)
    embeddings: Any = None  # modules.networks.embeddings.EmbeddingDatabase (embeddings/, textual inversion)
    styles: Any = None  # modules.styles.StyleDatabase (styles.csv)
    scripts: Any = None  # modules.scripts.ScriptRunners, once extensions are loaded (modules/extension_runtime.py)
    extension_errors: list = None  # type: ignore[assignment]  messages about extensions that failed to load
    upscalers: Any = None  # modules.upscaling.UpscalerRegistry (Lanczos, Nearest, models/ESRGAN, …)
    threads: cpu_threads.ThreadPolicy = None  # type: ignore[assignment]  CPU threads per job (--threads, setting)
    controlnets: Any = None  # modules.controlnet.models.ControlNetLibrary (models/ControlNet, --controlnet-dir)
    hypernetworks: Any = None  # modules.networks.hypernetworks.HypernetworkRegistry (models/hypernetworks)
    memory: MemoryManager = None  # type: ignore[assignment]  where weights live per job (modules/memory/)
    history: Any = None  # modules.history.HistoryStore: the index of saved pictures (history.sqlite3)
    visible_queue: Any = None  # modules.job_queue.VisibleQueue (made by create_app: every generation is a job)
    control_hooks: list = None  # type: ignore[assignment]  called with "interrupt"/"skip" (a cluster's workers)
    face_restorers: Any = None  # modules.face_restoration.FaceRestorers (models/GFPGAN, models/Codeformer)

    @classmethod
    def create(cls, paths: Paths, settings: Settings | None = None, device_config: devices.DeviceConfig | None = None,
               no_hashing: bool = False, threads: int = 0, memory: MemoryFlags | None = None,
               history: bool = True) -> "Engine":
        """`history=False`: no index of its own (a cluster worker: the head indexes what it saves)."""
        paths.ensure_dirs()
        _sweep_temp_files(paths)
        settings = settings if settings is not None else Settings.load(paths.config_file)
        device_config = device_config or devices.cpu()
        def list_hidden() -> bool:  # A1111's "Load models/files in hidden directories" (on by default)
            return bool(settings.get("list_hidden_files", True))

        registry = CheckpointRegistry(paths, HashCache(paths.cache_file), no_hashing=no_hashing,
                                      list_hidden=list_hidden)
        registry.refresh()
        models = ModelManager(registry, settings, paths, device_config)
        loras = LoraRegistry.from_paths(paths, registry.hash_cache, list_hidden)
        loras.refresh()
        engine = cls(paths, settings, device_config, registry, models, JobState(), JobQueue(), loras)
        engine.memory = models.memory = MemoryManager(memory or MemoryFlags(), device_config.device, settings)
        if history:
            engine.history = HistoryStore(paths.data_dir / "history.sqlite3", paths.outputs_dir)
        engine.embeddings = EmbeddingDatabase(paths.embeddings_dir)
        engine.hypernetworks = HypernetworkRegistry.from_paths(paths)
        engine.hypernetworks.refresh()
        engine.styles = StyleDatabase.from_paths(paths)
        engine.upscalers = UpscalerRegistry.from_paths(paths, device_config, settings)
        engine.threads = cpu_threads.ThreadPolicy(forced=threads, watch=device_config.device.type == "cpu")
        engine.controlnets = ControlNetLibrary(paths.controlnet_dirs,
                                               int(settings.get("control_net_model_cache_size", 2) or 2),
                                               [paths.clip_vision_dir, paths.annotator_dir / "clip_vision"])
        return engine

    @classmethod
    def from_args(cls, ns, paths: Paths | None = None, history: bool = True) -> "Engine":
        dc = devices.from_flags(use_cpu=ns.use_cpu, no_half=ns.no_half, no_half_vae=ns.no_half_vae,
                                precision=ns.precision, xformers=ns.xformers or ns.force_enable_xformers,
                                split_attention=(ns.opt_split_attention or ns.opt_sub_quad_attention)
                                and not ns.disable_opt_split_attention,
                                channels_last=ns.opt_channelslast, sdp_no_mem=ns.opt_sdp_no_mem_attention,
                                device_id=ns.device_id, upcast_sampling=ns.upcast_sampling)
        return cls.create(paths or Paths.from_args(ns), device_config=dc, no_hashing=ns.no_hashing,
                          threads=getattr(ns, "threads", 0) or 0, memory=MemoryFlags.from_args(ns), history=history)

    # -- generation ------------------------------------------------------------------------------------------------

    def txt2img(self, req: Txt2ImgRequest | dict) -> GenerationResult:
        if isinstance(req, dict):
            req = Txt2ImgRequest.from_dict(req)
        return self.generate(req)

    def img2img(self, req: Img2ImgRequest | dict) -> GenerationResult:
        if isinstance(req, dict):
            req = Img2ImgRequest.from_dict(req)
        return self.generate(req)

    def generate(self, req: GenerationRequest, script_args: list | None = None) -> GenerationResult:
        """Wait for our turn, then run the request (with the tab's scripts when extensions are loaded).

        `script_args`: the UI's flat script-arguments list; API requests name scripts in `script_name` /
        `alwayson_scripts` instead. Bad requests raise RequestError before any work is done."""
        from modules import img2img_batch

        if img2img_batch.has_batch_units(req):  # the ControlNet extension's batch units: once per control picture
            return img2img_batch.run_controlnet_batch(self, req, script_args)
        req.validate()
        if req.styles and self.styles is not None:
            self.styles.apply_to_request(req)
        prompt_limits.check(req, int(self.settings.get("prompt_max_tokens", 3000) or 0))
        with self.queue.turn():
            self.state.begin(req.mode, req.n_iter)
            try:
                if self.scripts is None:
                    if req.script_name or req.external_alwayson_scripts():
                        raise RequestError("scripts are not available (extensions are not loaded)")
                    return self.process(req)
                from modules.processing_compat import run_with_scripts

                return run_with_scripts(self, self.scripts.for_mode(req.mode), req, script_args)
            finally:
                self.state.end()

    def process(self, req: GenerationRequest, hooks: processing.ProcessingHooks = processing.NO_HOOKS
                ) -> GenerationResult:
        """Run one request now (the caller holds the queue turn): its override_settings, its model, the loop."""
        with self._overrides(req.override_settings, req.override_settings_restore_afterwards) as options:
            model = self.models.get(options.get("sd_model_checkpoint") if req.override_settings.get(
                "sd_model_checkpoint") else None)
            self.use_cpu_threads(model, req, options)
            ctx = ProcessingContext(model=model, options=options, outputs=self._outputs(req), loras=self.loras,
                                    embeddings=self.embeddings, upscalers=self.upscalers,
                                    upscale=self.upscalers.upscale_to if self.upscalers else None, hooks=hooks,
                                    controlnets=self.controlnets, annotator_dir=self.paths.annotator_dir,
                                    hypernetworks=self.hypernetworks, models=self.models,
                                    face_restorers=face_restoration.for_engine(self))
            ctx.state = self.state
            result = self._within_memory(model, req, ctx)
        self._index(result)
        return result

    def _index(self, result: GenerationResult) -> None:
        """Saved pictures into the history (after their files are written; a database problem never loses them)."""
        if self.history is None:
            return
        for path, text in zip(result.saved_paths, result.saved_infotexts):
            try:
                self.history.add(path, text)
            except Exception as e:  # noqa: BLE001 - the file is there; reconcile indexes it at the next start
                log.warning("history: could not index %s (%s)", path, e)

    def _within_memory(self, model, req: GenerationRequest, ctx: ProcessingContext) -> GenerationResult:
        """Run the job under its memory plan; out of GPU memory → a message naming the stage and the next mode (or,
        with --auto-retry-oom, one more try in that mode). The model stays usable either way."""
        element = 4 if model.dtype == torch.float32 else 2
        self.memory.prepare(model, job_of(req, element))
        try:
            result = processing.run_request(ctx, req)
        except Exception as e:  # noqa: BLE001 - only out-of-memory errors are handled here
            if not _is_oom(e):
                raise
            error = self.memory.out_of_memory(model, e)
            from modules.memory.planner import next_mode

            nxt = next_mode(self.memory.last_plan.mode) if self.memory.last_plan else None
            if not (self.memory.flags.auto_retry_oom and nxt) or self.memory.retry_mode:
                raise error from None
            log.warning("%s; retrying once in %s", error, nxt)
            self.memory.retry_mode = nxt
            try:
                self.memory.prepare(model, job_of(req, element))
                result = processing.run_request(ctx, req)
            except Exception as again:  # noqa: BLE001
                if _is_oom(again):
                    raise self.memory.out_of_memory(model, again) from None
                raise
            finally:
                self.memory.retry_mode = None
        self.memory.finish()
        return result

    def use_cpu_threads(self, model, req: GenerationRequest | None = None, options=None,
                        work: cpu_threads.Work | None = None) -> None:
        """Set this thread's torch CPU threads for the job (modules/cpu_threads.py); GPU jobs are left alone."""
        if self.threads is None or getattr(model, "device", self.device_config.device).type != "cpu":
            return
        if work is None and req is not None and getattr(model, "unet", None) is not None:
            width, height = req.width, req.height
            if getattr(req, "enable_hr", False):
                scale = max(1.0, float(getattr(req, "hr_scale", 1.0) or 1.0))
                width = max(width, int(getattr(req, "hr_resize_x", 0) or width * scale))
                height = max(height, int(getattr(req, "hr_resize_y", 0) or height * scale))
            work = cpu_threads.Work.for_job(model.unet.config, width, height, req.batch_size, req.cfg_scale != 1)
        setting = (options or self.settings).get("cpu_threads", 0) or 0
        self.threads.apply(work, setting)

    @contextmanager
    def _overrides(self, overrides: dict[str, Any], restore: bool):
        """Options for one job: the settings plus `override_settings` (validated; kept afterwards if asked)."""
        options = self.settings.as_dict()
        checked = {}
        for name, value in (overrides or {}).items():
            try:
                checked[name] = self.settings.validate(name, value) if name in self.settings else value
            except ValueError as e:
                raise RequestError(f"override_settings: {e}") from None
        options.update(checked)
        previous_vae = self.settings.get("sd_vae", "Automatic")
        if "sd_vae" in checked:
            self.settings.set("sd_vae", checked["sd_vae"])
        try:
            yield options
        finally:
            if restore:
                if "sd_vae" in checked:
                    self.settings.set("sd_vae", previous_vae)
            elif checked:
                self.settings.update({k: v for k, v in checked.items() if k in self.settings})
                self.settings.save()

    def _outputs(self, req: GenerationRequest) -> OutputDirs:
        """Where the job's images and grids go, as in A1111: `outdir_samples`/`outdir_grids` when set, else the
        tab's `outdir_<kind>_samples`/`_grids`; the request's `override_settings` of them count for this job."""
        kind = "img2img" if isinstance(req, Img2ImgRequest) else "txt2img"
        options = self.settings.as_dict()
        for k, v in (req.override_settings or {}).items():
            if k.startswith(("outdir_", "directories_")) or k.endswith("save_to_dirs") or k in _SAVE_OPTIONS:
                try:
                    options[k] = self.settings.validate(k, v) if k in self.settings else v
                except ValueError:  # the job's own check of its overrides says so (a 422 through the API)
                    pass

        def folder(*names: str, default: Path) -> Path:
            for name in names:
                value = options.get(name)
                if isinstance(value, str) and value.strip():
                    return self.paths.resolve_data_path(value.strip())
            return default

        root = self.paths.outputs_dir
        samples = folder("outdir_samples", f"outdir_{kind}_samples", default=root / f"{kind}-images")
        grids = folder("outdir_grids", f"outdir_{kind}_grids", default=root / f"{kind}-grids")
        styles = tuple(self.styles.get_style_prompts(req.styles)) if req.styles and self.styles is not None else ()
        save = dataclasses.replace(images.SaveOptions.from_options(options.get), style_prompts=styles)
        grid_save = dataclasses.replace(images.SaveOptions.from_options(options.get, grid=True), style_prompts=styles)
        maps = None
        if options.get("control_net_detectmap_autosaving", False):  # the extension's option and folder
            maps = self.paths.resolve_data_path(str(options.get("control_net_detectedmap_dir") or "detected_maps"))
        inits = folder("outdir_init_images", default=root / "init-images")
        return OutputDirs(samples=samples, grids=grids, save=save, grid_save=grid_save, detected_maps=maps,
                          init_images=inits)

    # -- control ---------------------------------------------------------------------------------------------------

    def interrupt(self) -> None:
        self.state.interrupt()
        for hook in self.control_hooks or []:
            hook("interrupt")

    def stop_after_current(self) -> None:
        """Finish the batch being made, then stop the job (A1111's first Interrupt click with "Don't Interrupt in
        the middle" on)."""
        self.state.stop_generating()
        for hook in self.control_hooks or []:
            hook("stop_generating")

    def skip(self) -> None:
        self.state.skip()
        for hook in self.control_hooks or []:
            hook("skip")


def _is_oom(error: BaseException) -> bool:
    """torch's out-of-memory error (CUDA's, or a backend's RuntimeError saying so), not our own message."""
    if isinstance(error, OutOfMemory):
        return False
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())
