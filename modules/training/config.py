"""Training settings as dataclasses, readable from a JSON or TOML file (kohya/A1111 option names where they exist).

Unknown keys are an error naming the valid ones, so a typo in a config file does not silently train with defaults.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.training.common import TrainingError

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class TrainingConfig:
    """What both trainers share. `mixed_precision` only applies on a GPU; the CPU always trains in float32."""

    dataset_dir: str = ""
    output_name: str = ""
    steps: int = 1000
    batch_size: int = 1
    learning_rate: float = 1e-4
    resolution: int = 512
    enable_buckets: bool = True
    bucket_step: int = 64
    caption_extension: str = ".txt"
    template: str = ""  # a template file, a built-in template name, or the template text itself
    seed: int = 0
    save_every: int = 0  # 0: save only at the end
    sample_every: int = 0  # 0: no sample images
    sample_prompt: str = ""
    sample_negative_prompt: str = ""
    sample_seed: int = 1
    sample_steps: int = 20
    sample_cfg_scale: float = 7.0
    sample_sampler: str = "Euler"
    gradient_checkpointing: bool = False
    mixed_precision: str = "fp16"
    clip_skip: int = 1
    resume: bool = True  # continue from the saved state of an earlier run with this name, if any

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise TrainingError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                kwargs[f.name] = _coerce(f, data[f.name])
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path, **overrides):
        """Read a `.json` or `.toml` file; `overrides` (not None) win over the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise TrainingError(f"cannot read config file {path}: {e.strerror or e}") from None
        try:
            data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise TrainingError(f"{path.name} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: "
                                f"{e}") from None
        if not isinstance(data, dict):
            raise TrainingError(f"{path.name} must hold a table/object of settings")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        name = self.output_name.strip()
        if not name:
            raise TrainingError("give the output a name")
        if any(c in name for c in '/\\:*?"<>|') or name.startswith(".") or name.endswith("."):
            raise TrainingError(f"output name {name!r} cannot be used as a file name")
        if not self.dataset_dir:
            raise TrainingError("choose the folder with the training images")
        for field_name in ("steps", "batch_size", "resolution", "bucket_step", "sample_steps"):
            if int(getattr(self, field_name)) < 1:
                raise TrainingError(f"{field_name} must be at least 1")
        if self.save_every < 0 or self.sample_every < 0:
            raise TrainingError("save_every and sample_every must be 0 (off) or more")
        if not self.learning_rate > 0:
            raise TrainingError("learning_rate must be above 0")
        if self.mixed_precision not in MIXED_PRECISION:
            raise TrainingError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}")
        if self.sample_every and not self.sample_prompt.strip():
            raise TrainingError("sample_every needs a sample_prompt")


@dataclass
class LoraTrainingConfig(TrainingConfig):
    """kohya's `networks.lora`: rank (network_dim) and alpha, on the UNet and/or the text encoder(s)."""

    rank: int = 8
    alpha: float = 8.0
    train_unet: bool = True
    train_text_encoder: bool = False
    text_encoder_lr: float | None = None  # None: learning_rate
    trigger_word: str = ""  # replaces [name] in templates; put before captions when there is no template

    def validate(self) -> None:
        super().validate()
        if self.rank < 1:
            raise TrainingError("rank must be at least 1")
        if self.alpha <= 0:
            raise TrainingError("alpha must be above 0")
        if not (self.train_unet or self.train_text_encoder):
            raise TrainingError("train the UNet, the text encoder, or both")


@dataclass
class EmbeddingTrainingConfig(TrainingConfig):
    """A1111's textual inversion: `output_name` is the embedding (the prompt token), created if it does not exist."""

    learning_rate: float = 0.005
    num_vectors: int = 1
    init_text: str = "*"
    template: str = "subject_filewords"

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.num_vectors <= 75:
            raise TrainingError("vectors per token must be between 1 and 75")


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if value is None:
            if "None" in kind:
                return None
            raise TrainingError(f"{f.name} cannot be empty")
        if kind.startswith("bool"):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not a whole number")
            return int(value)
        if kind.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as e:
        raise TrainingError(f"{f.name}: {value!r} is not valid ({e})") from None


__all__ = ["TrainingConfig", "LoraTrainingConfig", "EmbeddingTrainingConfig", "MIXED_PRECISION"]
