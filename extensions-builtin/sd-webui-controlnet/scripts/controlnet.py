"""The always-on script titled "ControlNet" whose arguments are the request's ControlNet units, as the
sd-webui-controlnet extension's script is in A1111: other extensions find it by title (or by this file's name) and
read or replace the units through `external_code`. Compatibility shim: ControlNet runs in the engine; its UI is the
built-in ControlNet panel (webui/controlnet_panel.py)."""
from modules import scripts


class ControlNetScript(scripts.Script):
    create_group = False

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []
