"""Where things live on disk (A1111's layout), resolved once from the command-line flags.

Layout (``<data>`` is ``--data-dir``, default the program folder; ``<models>`` is ``--models-dir``, default
``<data>/models``)::

    <models>/Stable-diffusion   checkpoints (+ --ckpt-dir)         <models>/VAE   VAEs (+ --vae-dir)
    <models>/text_encoder       CLIP-L/CLIP-G/T5 files for Flux and SD3 (+ --text-encoder-dir)
    <models>/Lora               LoRA (or --lora-dir)                <models>/LyCORIS, <models>/hypernetworks
    <models>/GFPGAN, <models>/Codeformer   face restoration (or --gfpgan-models-path, --codeformer-models-path)
    <data>/embeddings           textual inversion (or --embeddings-dir)
    <data>/outputs/{txt2img-images,txt2img-grids,img2img-images,img2img-grids,extras-images,init-images}
    <data>/extensions           extensions
    <data>/config.json (--ui-settings-file)  <data>/ui-config.json (--ui-config-file)  <data>/styles.csv (--styles-file)
    <data>/cache.json           sha256 cache                        <data>/params.txt  last infotext
    <data>/log/images           "Save" button target                <data>/tmp         scratch space
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Paths", "REPO_ROOT", "OUTPUT_SUBDIRS"]

REPO_ROOT = Path(__file__).resolve().parent.parent

#: A1111's output folders under ``<data>/outputs`` (option name → folder name).
OUTPUT_SUBDIRS = {
    "txt2img_samples": "txt2img-images",
    "txt2img_grids": "txt2img-grids",
    "img2img_samples": "img2img-images",
    "img2img_grids": "img2img-grids",
    "extras_samples": "extras-images",
    "init_images": "init-images",
}


def _p(value, default: Path) -> Path:
    return Path(value).expanduser().absolute() if value else default


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    models_dir: Path
    ckpt_dirs: list[Path]  # <models>/Stable-diffusion first, then --ckpt-dir
    vae_dirs: list[Path]  # <models>/VAE first, then --vae-dir
    lora_dir: Path
    embeddings_dir: Path
    outputs_dir: Path
    config_file: Path
    cache_file: Path
    styles_file: Path
    ui_config_file: Path
    extensions_dir: Path
    hypernetwork_dir: Path = None  # type: ignore[assignment]  (filled in __post_init__)
    lycoris_dir: Path = None  # type: ignore[assignment]
    extensions_builtin_dir: Path = REPO_ROOT / "extensions-builtin"
    styles_files: list[Path] = field(default_factory=list)  # every --styles-file (styles_file is the first)
    ckpt_file: Path | None = None  # --ckpt
    text_encoder_dirs: list[Path] = field(default_factory=list)  # <models>/text_encoder, then --text-encoder-dir
    controlnet_dirs: list[Path] = field(default_factory=list)  # <models>/ControlNet, then --controlnet-dir
    annotator_dir: Path = None  # type: ignore[assignment]  ControlNet preprocessor weights (models/ControlNetPreprocessor)
    clip_vision_dir: Path = None  # type: ignore[assignment]  IP-Adapters' CLIP vision encoders (models/clip_vision)
    gfpgan_dir: Path = None  # type: ignore[assignment]  GFPGANv1.4.pth (models/GFPGAN, --gfpgan-models-path)
    codeformer_dir: Path = None  # type: ignore[assignment]  codeformer-v0.1.0.pth (models/Codeformer)

    def __post_init__(self):
        if self.hypernetwork_dir is None:
            object.__setattr__(self, "hypernetwork_dir", self.models_dir / "hypernetworks")
        if self.lycoris_dir is None:
            object.__setattr__(self, "lycoris_dir", self.models_dir / "LyCORIS")
        if not self.styles_files:
            object.__setattr__(self, "styles_files", [self.styles_file])
        if not self.text_encoder_dirs:
            object.__setattr__(self, "text_encoder_dirs", [self.models_dir / "text_encoder"])
        if not self.controlnet_dirs:
            object.__setattr__(self, "controlnet_dirs", [self.models_dir / "ControlNet"])
        if self.annotator_dir is None:
            object.__setattr__(self, "annotator_dir", self.models_dir / "ControlNetPreprocessor")
        if self.clip_vision_dir is None:
            object.__setattr__(self, "clip_vision_dir", self.models_dir / "clip_vision")
        if self.gfpgan_dir is None:
            object.__setattr__(self, "gfpgan_dir", self.models_dir / "GFPGAN")
        if self.codeformer_dir is None:
            object.__setattr__(self, "codeformer_dir", self.models_dir / "Codeformer")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "Paths":
        """Resolve every path from parsed flags (missing attributes count as "not given")."""
        get = lambda name: getattr(ns, name, None)  # noqa: E731
        data = _p(get("data_dir"), REPO_ROOT)
        models = _p(get("models_dir"), data / "models")
        ckpt_dirs = [models / "Stable-diffusion"]
        if get("ckpt_dir"):
            extra = _p(get("ckpt_dir"), ckpt_dirs[0])
            if extra not in ckpt_dirs:
                ckpt_dirs.append(extra)
        vae_dirs = [models / "VAE"]
        if get("vae_dir"):
            extra = _p(get("vae_dir"), vae_dirs[0])
            if extra not in vae_dirs:
                vae_dirs.append(extra)
        text_encoder_dirs = [models / "text_encoder"]
        if get("text_encoder_dir"):
            extra = _p(get("text_encoder_dir"), text_encoder_dirs[0])
            if extra not in text_encoder_dirs:
                text_encoder_dirs.append(extra)
        controlnet_dirs = [models / "ControlNet"]
        if get("controlnet_dir"):
            extra = _p(get("controlnet_dir"), controlnet_dirs[0])
            if extra not in controlnet_dirs:
                controlnet_dirs.append(extra)
        styles = [_p(s, data / "styles.csv") for s in (get("styles_file") or [])]
        if isinstance(get("styles_file"), str):  # a Namespace built by hand with a single string
            styles = [_p(get("styles_file"), data / "styles.csv")]
        styles = styles or [data / "styles.csv"]
        return cls(
            data_dir=data,
            models_dir=models,
            ckpt_dirs=ckpt_dirs,
            vae_dirs=vae_dirs,
            lora_dir=_p(get("lora_dir"), models / "Lora"),
            embeddings_dir=_p(get("embeddings_dir"), data / "embeddings"),
            outputs_dir=data / "outputs",
            config_file=_p(get("ui_settings_file"), data / "config.json"),
            cache_file=data / "cache.json",
            styles_file=styles[0],
            ui_config_file=_p(get("ui_config_file"), data / "ui-config.json"),
            extensions_dir=data / "extensions",
            hypernetwork_dir=_p(get("hypernetwork_dir"), models / "hypernetworks"),
            styles_files=styles,
            ckpt_file=_p(get("ckpt"), None) if get("ckpt") else None,
            text_encoder_dirs=text_encoder_dirs,
            controlnet_dirs=controlnet_dirs,
            annotator_dir=_p(get("controlnet_annotator_models_path"), models / "ControlNetPreprocessor"),
            gfpgan_dir=_p(get("gfpgan_models_path"), models / "GFPGAN"),
            codeformer_dir=_p(get("codeformer_models_path"), models / "Codeformer"),
        )

    # --- derived locations -------------------------------------------------------------------------------------

    def output_dir(self, kind: str) -> Path:
        """``outputs/<folder>`` for ``kind`` in :data:`OUTPUT_SUBDIRS` (e.g. ``"txt2img_samples"``)."""
        return self.outputs_dir / OUTPUT_SUBDIRS[kind]

    @property
    def txt2img_samples_dir(self) -> Path:
        return self.output_dir("txt2img_samples")

    @property
    def txt2img_grids_dir(self) -> Path:
        return self.output_dir("txt2img_grids")

    @property
    def img2img_samples_dir(self) -> Path:
        return self.output_dir("img2img_samples")

    @property
    def img2img_grids_dir(self) -> Path:
        return self.output_dir("img2img_grids")

    @property
    def extras_samples_dir(self) -> Path:
        return self.output_dir("extras_samples")

    @property
    def save_dir(self) -> Path:
        """Target of the UI's Save button (A1111 ``outdir_save``: ``log/images``)."""
        return self.data_dir / "log" / "images"

    @property
    def params_file(self) -> Path:
        return self.data_dir / "params.txt"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    def model_subdir(self, name: str) -> Path:
        """``<models>/<name>``, e.g. ``model_subdir("ESRGAN")``."""
        return self.models_dir / name

    def resolve_data_path(self, value: str | Path) -> Path:
        """A path from a setting (``outputs/txt2img-images``): relative paths are relative to the data dir."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.data_dir / path

    def ensure_dirs(self) -> None:
        """Create the folders the program writes to or that users are expected to fill (idempotent)."""
        dirs = [self.data_dir, self.models_dir, self.ckpt_dirs[0], self.vae_dirs[0], self.text_encoder_dirs[0],
                self.lora_dir, self.controlnet_dirs[0], self.annotator_dir, self.clip_vision_dir, self.gfpgan_dir,
                self.codeformer_dir,
                self.embeddings_dir, self.outputs_dir, self.extensions_dir,
                *(self.outputs_dir / sub for sub in OUTPUT_SUBDIRS.values()),
                self.config_file.parent, self.cache_file.parent, self.ui_config_file.parent, self.styles_file.parent]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)


def __getattr__(name: str):
    """A1111's module-level paths (`models_path`, `data_path`, `script_path`, `extensions_dir`, …) for extensions,
    from the running engine's paths (modules/shared.py binds it at start-up)."""
    if name in ("script_path", "models_path", "data_path", "extensions_dir", "extensions_builtin_dir"):
        from modules import shared

        if name == "script_path":
            return str(REPO_ROOT)
        engine = shared.engine
        if engine is None:
            raise AttributeError(f"modules.paths.{name} is not known before start-up")
        value = {"models_path": engine.paths.models_dir, "data_path": engine.paths.data_dir,
                 "extensions_dir": engine.paths.extensions_dir,
                 "extensions_builtin_dir": engine.paths.extensions_builtin_dir}[name]
        return str(value)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
