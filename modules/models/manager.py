"""Which checkpoint is loaded: look-up by title/name/hash, a RAM cache of `sd_checkpoints_limit` models, the VAE.

Dropping a model releases every reference to it (and CUDA's cached blocks), so switching back and forth does not
grow memory.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

from modules.devices import DeviceConfig, torch_gc
from modules.models import attention, loader, lowbit
from modules.models.flow_loader import PartSources
from modules.models.loader import LoadedModel, ModelLoadError
from modules.models.registry import CheckpointInfo, CheckpointRegistry, find_vae_for_checkpoint, list_vaes

log = logging.getLogger(__name__)


def embedded_architecture(info: CheckpointInfo) -> dict:
    """The architecture a checkpoint file carries in its metadata ({} for none); reads only the file's header."""
    if info.is_diffusers:
        return {}
    return loader.read_embedded_architecture(info.filename) or {}


def _back_on_device(model: LoadedModel) -> None:
    """Parts moved off the device (an extension's `lowvram.send_everything_to_cpu`) come back before use (parts an
    offload plan manages come in by themselves)."""
    from modules.memory.offload import offloader_of

    if offloader_of(model) is not None:
        return
    for part in (model.unet, model.vae, model.text_encoder, model.text_encoder_2):
        param = next(part.parameters(), None) if part is not None and hasattr(part, "parameters") else None
        if param is not None and param.device.type != model.device.type:
            part.to(model.device)


def _file_bytes(path: Path) -> int:
    """A checkpoint's size on disk (a diffusers folder: its files'), an upper bound of its weights in 16 bits."""
    path = Path(path)
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


class ModelNotFoundError(LookupError):
    """No checkpoint matches the requested title, name or hash."""


def vae_nan_retry(settings) -> str | None:
    """How a 16-bit VAE that decodes to NaN tries again: A1111's "Automatically convert VAE to bfloat16" first,
    then "Automatically revert VAE to 32-bit floats" (on by default); None: it does not (an error says so)."""
    if settings.get("auto_vae_precision_bfloat16", False):
        return "bfloat16"
    return "float32" if settings.get("auto_vae_precision", True) else None


class ModelManager:
    def __init__(self, registry: CheckpointRegistry, settings, paths, device_config: DeviceConfig):
        self.registry, self.settings, self.paths, self.device_config = registry, settings, paths, device_config
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.RLock()
        self._last_used: str | None = None  # filename of the model most recently handed out
        self.on_loaded: list = []
        self.loading: str | None = None  # the title being read from disk now (the UI says "Loading model …")
        self.memory = None  # modules.memory.manager.MemoryManager: an offload plan loads weights into host memory

    # -- look-up -------------------------------------------------------------------------------------------------

    def resolve(self, title: str | None = None) -> CheckpointInfo:
        """The checkpoint for `title` (title, name, stem or hash), else the configured one, else the first."""
        if not len(self.registry):
            self.registry.refresh()
        if title:
            info = self.registry.get(title)
            if info is None:
                self.registry.refresh()
                info = self.registry.get(title)
            if info is None:
                names = ", ".join(self.registry.titles()) or "none found"
                raise ModelNotFoundError(f"checkpoint {title!r} not found; available: {names}")
            return info
        configured = self.settings.get("sd_model_checkpoint", None)
        if configured:
            info = self.registry.get(configured)
            if info is not None:
                return info
            log.warning("configured checkpoint %r not found; using the one in use or the first available one",
                        configured)
        infos = self.registry.list()
        # Nothing configured: keep to the model in use rather than the first file listed (which may be one that
        # just failed to load; trying it unloaded the model in use).
        last = next((i for i in infos if str(i.filename) == self._last_used), None)
        if last is not None:
            return last
        if not infos:
            dirs = ", ".join(str(d) for d in self.paths.ckpt_dirs)
            raise ModelNotFoundError(f"no checkpoints found: put a .safetensors/.ckpt file or a diffusers folder in {dirs}")
        # A file whose header shows it cannot load is never the default over one that can; the bundled demo model
        # is the choice only when it is the only checkpoint there is.
        loadable = [i for i in infos if not i.problem] or infos
        return next((i for i in loadable if not embedded_architecture(i).get("demo")), loadable[0])

    def demo_note(self, title: str | None = None) -> dict | None:
        """The architecture metadata of `title` (else the default checkpoint) when it is the bundled demo model
        (`description`, `default_size`, `default_cfg`), else None."""
        try:
            info = self.resolve(title)
        except ModelNotFoundError:
            return None
        arch = embedded_architecture(info)
        return arch if arch.get("demo") else None

    # -- loading -------------------------------------------------------------------------------------------------

    @property
    def loaded(self) -> list[LoadedModel]:
        return list(self._cache.values())

    @property
    def current(self) -> LoadedModel | None:
        return next(reversed(self._cache.values()), None)

    def get(self, title: str | None = None, remember: bool = True) -> LoadedModel:
        """Return a loaded model, loading (and evicting the least recently used beyond the limit) as needed.
        `remember=False` (the refiner, loaded part-way through a job): the model in use stays the one later jobs
        fall back to when no checkpoint is configured."""
        info = self.resolve(title)
        with self._lock:
            key = str(info.filename)
            model = self._cache.get(key)
            if model is not None and getattr(model, "is_flow", False) and \
                    model.extra.get("parts_key") != self._parts_key():
                self._drop(key)  # other VAE / Text Encoder files were picked: build it again with them
                model = None
            if model is not None and model.extra.get("low_bits") != self._low_bits():
                self._drop(key)  # "Diffusion in Low Bits" changed: fp8 cannot go back to fp16 but by reading again
                model = None
            if model is None:
                if info.problem:  # bad by its header: the loader says why, before the model in use is unloaded
                    model = self._load(info, make_room=False)
                else:
                    model = self._load_keeping_previous(info)
                self._cache[key] = model
                self._evict(keep=key)
                for cb in self.on_loaded:
                    cb(model)
            else:
                self._cache.move_to_end(key)
                _back_on_device(model)
            self.apply_vae(model, info)
            attention.ensure(model, self.settings.get("cross_attention_optimization", "Automatic"),
                             self.device_config.attention)
            model.extra["vae_nan_retry"] = vae_nan_retry(self.settings)
            if remember:
                self._last_used = key
            return model

    def select(self, title: str) -> LoadedModel:
        """Load `title` and make it the configured checkpoint (persisted in config.json)."""
        model = self.get(title)
        self.settings.set("sd_model_checkpoint", model.title)
        self.settings.save()
        return model

    def _load_keeping_previous(self, info: CheckpointInfo) -> LoadedModel:
        """Load `info`; if it fails after the model in use was unloaded to make room, load that one again, so a
        user's bad file never leaves the app without a model."""
        previous = next((i for i in self.registry.list() if str(i.filename) == self._last_used), None)
        try:
            return self._load(info)
        except Exception:
            if previous is not None and previous is not info and str(previous.filename) not in self._cache:
                try:
                    log.warning("loading %s failed; loading %s again", info.title, previous.title)
                    self._cache[str(previous.filename)] = self._load(previous)
                except Exception as again:  # noqa: BLE001 - the first error is the one to report
                    log.error("could not load %s again: %s", previous.title, again)
            raise

    def _load(self, info: CheckpointInfo, make_room: bool = True) -> LoadedModel:
        self.loading = info.title
        try:
            if not info.is_diffusers:
                self.registry.ensure_hash(info)
            limit = max(1, int(self.settings.get("sd_checkpoints_limit", 1) or 1))
            while make_room and len(self._cache) >= limit:  # free RAM before reading the next file, not after
                self._drop(next(iter(self._cache)))
            log.info("Loading checkpoint %s", info.title)
            model = loader.load_model(info.filename, self._load_config(info), name=info.name, title=info.title,
                                      shorthash=info.shorthash, sources=self.part_sources())
            model.device_config = self.device_config  # loaded into host memory or not, it computes on the device
        finally:
            self.loading = None
        if model.spec.is_demo:
            log.warning("%s is the %s", info.title, model.spec.embedded.get("description", "demo model"))
        model.extra["parts_key"] = self._parts_key()
        model.extra["attention_asked"] = self.device_config.attention  # what the loader set up (the flags)
        choice, text_encoders = model.extra["low_bits"] = self._low_bits()
        lowbit.apply_low_bits(model, choice, text_encoders)
        return model

    def _load_config(self, info: CheckpointInfo | None = None) -> DeviceConfig:
        """Where a checkpoint's weights are read to: host memory when the user's flags or settings offload, or when
        the file would not fit in what the GPU has free (the job's plan then brings in what fits), else the
        device."""
        if self.memory is None or self.device_config.device.type == "cpu":
            return self.device_config
        mode, _reason = self.memory.forced(None)
        size = _file_bytes(info.filename) if info is not None else 0
        free = self.memory.device_free() if size and mode != "resident" else None
        if mode in ("model", "sequential") or self.memory.weights_budget() is not None or (
                free is not None and size > 0.85 * free):
            import dataclasses

            import torch

            return dataclasses.replace(self.device_config, device=torch.device("cpu"))
        return self.device_config

    def part_sources(self) -> PartSources:
        """Where a Flux/SD3 checkpoint's missing VAE/text encoders come from: the files picked under "VAE / Text
        Encoder" (`forge_additional_modules`, names or paths), else the text-encoder and VAE folders."""
        picked = []
        for entry in self.settings.get("forge_additional_modules", []) or []:
            path = Path(entry)
            if not path.is_absolute():
                path = next((d / entry for d in [*self._text_encoder_dirs(), *self.paths.vae_dirs]
                             if (d / entry).is_file()), path)
            if not path.is_file():
                log.warning("VAE / Text Encoder: %s not found; ignored", entry)
                continue
            picked.append(path)
        return PartSources(self._text_encoder_dirs(), list(self.paths.vae_dirs), picked)

    def part_choices(self) -> list[str]:
        """The files "VAE / Text Encoder" offers: every file in the text-encoder and VAE folders, by name."""
        names: list[str] = []
        for role in ("t5", "vae"):
            for path in PartSources(self._text_encoder_dirs(), list(self.paths.vae_dirs)).candidates(role):
                if path.name not in names:
                    names.append(path.name)
        return names

    def _low_bits(self) -> tuple[str, bool]:
        """Forge's "Diffusion in Low Bits" and whether it applies to the text encoders too."""
        choice = str(self.settings.get("forge_unet_storage_dtype", "Automatic") or "Automatic")
        return (choice if choice in lowbit.LOW_BITS else "Automatic",
                bool(self.settings.get("low_bits_text_encoders", False)))

    def _parts_key(self) -> tuple:
        return tuple(self.settings.get("forge_additional_modules", []) or [])

    def _text_encoder_dirs(self) -> list[Path]:
        return list(getattr(self.paths, "text_encoder_dirs", None) or [self.paths.models_dir / "text_encoder"])

    def _evict(self, keep: str) -> None:
        limit = max(1, int(self.settings.get("sd_checkpoints_limit", 1) or 1))
        while len(self._cache) > limit:
            oldest = next(iter(self._cache))
            if oldest == keep:
                break
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        model = self._cache.pop(key, None)
        if model is not None:
            model.extra.clear()
            del model
        torch_gc()

    def unload(self) -> None:
        with self._lock:
            for key in list(self._cache):
                self._drop(key)

    def reload(self) -> LoadedModel:
        with self._lock:
            current = self.current
            title = current.title if current else None
            self.unload()
            return self.get(title)

    # -- VAE -----------------------------------------------------------------------------------------------------

    def vae_choices(self) -> list[str]:
        return ["Automatic", "None"] + [v.name for v in list_vaes(self.paths)]

    def apply_vae(self, model: LoadedModel, info: CheckpointInfo) -> None:
        """Honour `sd_vae`: "Automatic" (a VAE named like the checkpoint), "None" (the checkpoint's own), or a
        file from models/VAE."""
        choice = self.settings.get("sd_vae", "Automatic") or "Automatic"
        vaes = list_vaes(self.paths)
        if choice == "Automatic":
            vae = find_vae_for_checkpoint(info, vaes)
        elif choice == "None":
            vae = None
        else:
            vae = next((v for v in vaes if v.name == choice or Path(v.name).stem == choice), None)
            if vae is None:
                log.warning("VAE %r not found; using the checkpoint's own VAE", choice)
        wanted = str(vae.filename) if vae else None
        if model.extra.get("vae_path") == wanted:
            return
        try:
            # A1111's infotext: "VAE: <file name>" (pasting it back selects that VAE), "VAE hash: <sha256[:10]>".
            loader.replace_vae(model, vae.filename if vae else None, vae_name=vae.name if vae else None,
                               vae_hash=self._vae_hash(vae) if vae else None)
        except ModelLoadError as e:
            log.error("VAE %s could not be loaded (%s); using the checkpoint's own VAE", vae.name, e)
            loader.replace_vae(model, None)
            wanted = None
        model.extra["vae_path"] = wanted

    def _vae_hash(self, vae) -> str | None:
        if self.registry.no_hashing:
            return None
        sha = self.registry.hash_cache.sha256(vae.filename, vae.hash_key)
        return sha[:10] if sha else None
