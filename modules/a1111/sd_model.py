"""What A1111 extensions see as `shared.sd_model` and `CheckpointInfo`: A1111's attribute names over our loaded
model (flags like `is_sdxl`, the checkpoint info with a str `filename`, VAE encode/decode of latents). LDM module
objects (`model`, `cond_stage_model`, `conditioner`, `first_stage_model`) stand for internals we do not have: they
exist where A1111 has them (extensions test `hasattr(sd_model, "conditioner")` to tell SDXL) and fail when used."""
from __future__ import annotations

from modules.a1111.unsupported import Unsupported


class CheckpointInfoView:
    """A1111's CheckpointInfo fields (`filename` is a str, as extensions expect)."""

    def __init__(self, info):
        self._info = info

    def __getattr__(self, name):
        return getattr(self._info, name)

    @property
    def filename(self) -> str:
        return str(self._info.filename)

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def title(self) -> str:
        return self._info.title

    @property
    def model_name(self) -> str:
        return self._info.model_name

    @property
    def hash(self):
        return self._info.hash

    @property
    def sha256(self):
        return self._info.sha256

    @property
    def shorthash(self):
        return self._info.shorthash

    @property
    def is_safetensors(self) -> bool:
        return self.filename.lower().endswith(".safetensors")

    @property
    def metadata(self) -> dict:
        from modules.a1111.sd_models_names import read_metadata_from_safetensors

        return read_metadata_from_safetensors(self.filename) if self.is_safetensors else {}

    def calculate_shorthash(self):
        from modules.a1111._engine import engine

        engine().registry.ensure_hash(self._info)
        return self._info.shorthash

    def __eq__(self, other):
        return isinstance(other, CheckpointInfoView) and other._info is self._info or other is self._info

    def __hash__(self):
        return id(self._info)

    def __repr__(self):
        return f"CheckpointInfo({self.title!r})"


class SdModelView:
    """`shared.sd_model` / `p.sd_model`: A1111's names over a LoadedModel; anything else is the LoadedModel's."""

    def __init__(self, loaded, info=None):
        object.__setattr__(self, "_loaded", loaded)
        object.__setattr__(self, "_info", info)
        object.__setattr__(self, "_extra", {"network_layer_mapping": {}, "lowvram": False})

    @property
    def loaded_model(self):
        return self._loaded

    @property
    def is_sdxl(self) -> bool:
        return self._loaded.family.startswith("sdxl")

    @property
    def is_sdxl_inpaint(self) -> bool:
        return self.is_sdxl and "inpaint" in self._loaded.family

    @property
    def is_sd2(self) -> bool:
        return self._loaded.family.startswith("sd2")

    @property
    def is_sd1(self) -> bool:
        return self._loaded.family.startswith("sd1")

    @property
    def is_sd3(self) -> bool:
        return False

    @property
    def is_ssd(self) -> bool:
        return False

    @property
    def sd_checkpoint_info(self):
        if self._info is None:
            from modules.a1111._engine import engine

            info = engine().registry.get(self._loaded.title)
            object.__setattr__(self, "_info", CheckpointInfoView(info) if info is not None else None)
        return self._info

    @property
    def sd_model_hash(self):
        return self._loaded.shorthash

    @property
    def sd_model_checkpoint(self) -> str:
        return str(self._loaded.filename)

    @property
    def parameterization(self) -> str:
        return "v" if getattr(self._loaded.spec, "prediction_type", "epsilon") == "v_prediction" else "eps"

    @property
    def latent_channels(self) -> int:
        return int(getattr(self._loaded.unet.config, "out_channels", 4))

    @property
    def device(self):
        return self._loaded.device

    @property
    def dtype(self):
        return self._loaded.dtype

    @property
    def model(self):
        return Unsupported("sd_model.model", "the denoiser is a diffusers UNet, not LDM's DiffusionWrapper")

    @property
    def first_stage_model(self):
        return Unsupported("sd_model.first_stage_model", "use decode_first_stage/encode_first_stage")

    def __getattr__(self, name):
        extra = self._extra
        if name in extra:
            return extra[name]
        if name == "cond_stage_model" and not self.is_sdxl:
            return Unsupported("sd_model.cond_stage_model", "prompts are encoded by the engine's conditioning")
        if name == "conditioner" and self.is_sdxl:
            return Unsupported("sd_model.conditioner", "prompts are encoded by the engine's conditioning")
        if name == "get_learned_conditioning":
            return Unsupported("sd_model.get_learned_conditioning", "prompts are encoded by the engine's conditioning")
        return getattr(self._loaded, name)

    def __setattr__(self, name, value):
        self._extra[name] = value

    def _scale(self):
        config = self._loaded.vae.config
        return float(getattr(config, "scaling_factor", 0.18215)), float(getattr(config, "shift_factor", 0.0) or 0.0)

    def decode_first_stage(self, z):
        """Latents (scaled, as the sampler sees them) → images in [-1, 1]."""
        import torch

        scale, shift = self._scale()
        vae = self._loaded.vae
        with torch.no_grad():
            return vae.decode((z / scale + shift).to(vae.device, vae.dtype)).sample

    def encode_first_stage(self, x):
        """Images in [-1, 1] → a distribution-like object with `.sample()`/`.mode()` (unscaled, as LDM)."""
        import torch

        vae = self._loaded.vae
        with torch.no_grad():
            return vae.encode(x.to(vae.device, vae.dtype)).latent_dist

    def get_first_stage_encoding(self, encoder_posterior):
        scale, shift = self._scale()
        z = encoder_posterior.sample() if hasattr(encoder_posterior, "sample") else encoder_posterior
        return (z - shift) * scale

    def __eq__(self, other):
        if isinstance(other, SdModelView):
            return other._loaded is self._loaded
        return other is self._loaded

    def __hash__(self):
        return id(self._loaded)

    def __repr__(self):
        return f"<sd_model {self._loaded.title!r} ({self._loaded.family})>"


def view(loaded):
    if loaded is None or isinstance(loaded, SdModelView):
        return loaded
    return SdModelView(loaded)
