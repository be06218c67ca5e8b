"""A1111's `modules.textual_inversion` package (its `textual_inversion` module is the one extensions import)."""
