"""A1111's `modules.errors`: how extensions report their failures (to the log, with the traceback)."""
from __future__ import annotations

import logging
import sys
import traceback

log = logging.getLogger("extensions")

_shown_once: set[str] = set()
exception_records: list[dict] = []


def record_exception() -> None:
    exc = sys.exc_info()[1]
    if exc is not None:
        exception_records.append({"exception": repr(exc), "traceback": traceback.format_exc()})
        del exception_records[:-5]


def report(message: str, *, exc_info: bool = False) -> None:
    if exc_info:
        record_exception()
    log.error("%s", message, exc_info=exc_info and sys.exc_info()[0] is not None)


def print_error_explanation(message: str) -> None:
    log.error("%s", message)


def display(e: BaseException, task: str, *, full_traceback: bool = False) -> None:
    log.error("%s: %s: %s\n%s", task, type(e).__name__, e,
              "".join(traceback.format_exception(type(e), e, e.__traceback__)))


def display_once(e: BaseException, task: str) -> None:
    if task in _shown_once:
        return
    _shown_once.add(task)
    display(e, task)


def run(code, task: str):
    try:
        code()
    except Exception as e:  # noqa: BLE001 - A1111's contract: report and go on
        display(e, task)


def check_versions() -> None:
    """A1111 warns about torch/xformers versions; ours are pinned by requirements.txt."""
