"""A1111's `modules.sd_schedulers`: the "Schedule type" list, from our schedule table."""
from __future__ import annotations

from collections import namedtuple

from modules.sampling import samplers as _ours

Scheduler = namedtuple("Scheduler", ["name", "label", "function", "default_rho", "need_inner_model", "aliases"],
                       defaults=(None, -1, False, None))

schedulers = [Scheduler(s.name, s.label, None, s.default_rho, s.need_inner_model, list(s.aliases))
              for s in _ours.SCHEDULE_TYPES]
schedulers_map = {**{s.name: s for s in schedulers}, **{s.label: s for s in schedulers}}
