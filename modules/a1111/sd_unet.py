"""A1111's `modules.sd_unet`: alternative UNet implementations (TensorRT and the like) plug in here; not here."""
from __future__ import annotations

current_unet_option = None
current_unet = None
unet_options: list = []


def list_unets() -> None:
    unet_options.clear()


def get_unet_option(option=None):
    return None


def apply_unet(option=None) -> None:
    """No alternative UNets: the engine's own is used."""


class SdUnetOption:
    model_name = None
    label = None

    def create_unet(self):
        raise NotImplementedError("alternative UNet implementations are not supported")


class SdUnet(object):
    def forward(self, x, timesteps, context, *args, **kwargs):
        raise NotImplementedError("alternative UNet implementations are not supported")

    def activate(self):
        pass

    def deactivate(self):
        pass
