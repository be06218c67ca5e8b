"""A1111's `modules.options` (1.7+): the option classes, the same ones `modules.shared` offers."""
from modules.shared import OptionHTML, OptionInfo, Options, options_section  # noqa: F401


def categories():
    return {}
