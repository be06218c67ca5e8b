"""A1111's `modules.timer`: start-up timings extensions add their steps to."""
from __future__ import annotations

import time


class Timer:
    def __init__(self, print_log=False):
        self.start = time.time()
        self.records: dict[str, float] = {}
        self.total = 0.0
        self.print_log = print_log

    def elapsed(self) -> float:
        end = time.time()
        res = end - self.start
        self.start = end
        return res

    def record(self, category, extra_time=0, disable_log=False):
        e = self.elapsed()
        self.records[category] = self.records.get(category, 0) + e + extra_time
        self.total += e + extra_time

    def subcategory(self, name):
        import contextlib

        return contextlib.nullcontext()

    def summary(self):
        parts = [f"{k}: {v:.1f}s" for k, v in self.records.items() if v >= 0.1]
        return f"{self.total:.1f}s" + (f" ({', '.join(parts)})" if parts else "")

    def dump(self):
        return {"total": self.total, "records": self.records}

    def reset(self):
        self.__init__()


startup_timer = Timer()
startup_record = None
