"""The engine: models, sampling, saving, settings, the API. No UI code lives here."""
from modules import a1111 as _a1111

_a1111.install()  # A1111 module names extensions import resolve through its one table (modules/a1111/)
