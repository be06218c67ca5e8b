"""Helpers shared by the built-in scripts (importable because the extension's folder is on sys.path)."""
