"""A1111's `modules.shared_state`: `State` is our job state (modules/jobs.py)."""
from modules.jobs import JobState as State  # noqa: F401
