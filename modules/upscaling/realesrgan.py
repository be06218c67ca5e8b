"""A1111's Real-ESRGAN upscalers: listed by A1111's names whether or not their file is there yet, and downloaded
from the authors' releases into `models/RealESRGAN` the first time one is used (A1111's `UpscalerRealESRGAN`).
The setting `realesrgan_enabled_models` picks which are listed (A1111's default: the two 4x+ ones); a file already
in the folder under its released name is used as it is, never downloaded again."""
from __future__ import annotations

from dataclasses import dataclass

FOLDER = "RealESRGAN"
RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases/download"
ENABLED_SETTING = "realesrgan_enabled_models"
DEFAULT_ENABLED = ("R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B")


@dataclass(frozen=True)
class RealEsrganModel:
    name: str  # A1111's, as infotexts ("Hires upscaler: R-ESRGAN 4x+") and API requests name it
    release: str
    file: str
    scale: int

    @property
    def url(self) -> str:
        return f"{RELEASES}/{self.release}/{self.file}"


MODELS = (
    RealEsrganModel("R-ESRGAN General 4xV3", "v0.2.5.0", "realesr-general-x4v3.pth", 4),
    RealEsrganModel("R-ESRGAN General WDN 4xV3", "v0.2.5.0", "realesr-general-wdn-x4v3.pth", 4),
    RealEsrganModel("R-ESRGAN AnimeVideo", "v0.2.5.0", "realesr-animevideov3.pth", 4),
    RealEsrganModel("R-ESRGAN 4x+", "v0.1.0", "RealESRGAN_x4plus.pth", 4),
    RealEsrganModel("R-ESRGAN 4x+ Anime6B", "v0.2.2.4", "RealESRGAN_x4plus_anime_6B.pth", 4),
    RealEsrganModel("R-ESRGAN 2x+", "v0.2.1", "RealESRGAN_x2plus.pth", 2),
)
NAMES = tuple(m.name for m in MODELS)


def by_file(file_name: str) -> RealEsrganModel | None:
    return next((m for m in MODELS if m.file.lower() == file_name.lower()), None)


def enabled(settings) -> list[RealEsrganModel]:
    """The models `realesrgan_enabled_models` lists (A1111's default without settings), in A1111's order."""
    chosen = settings.get(ENABLED_SETTING, list(DEFAULT_ENABLED)) if settings is not None else DEFAULT_ENABLED
    return [m for m in MODELS if m.name in (chosen or ())]
