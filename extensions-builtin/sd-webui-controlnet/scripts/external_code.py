"""The ControlNet extension's `external_code` module under the paths other extensions import it from
(`scripts.external_code`, `extensions-builtin.sd-webui-controlnet.scripts.external_code`). Compatibility shim: the
implementation is modules/a1111/controlnet_external_code.py (ControlNet itself is built into the engine)."""
from modules.a1111.controlnet_external_code import *  # noqa: F401,F403
from modules.a1111.controlnet_external_code import __all__  # noqa: F401
