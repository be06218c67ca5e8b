"""A1111-compatible HTTP API (``/sdapi/v1``): ``mount(app, ctx)`` adds it to the FastAPI app."""
from modules.api.api import mount

__all__ = ["mount"]
