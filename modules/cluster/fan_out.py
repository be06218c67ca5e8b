"""A request's batches (Batch count, `n_iter`) spread over several workers (the setting "cluster_fan_out"), put
back together as the one result a single worker would have given: the same pictures with the same seeds and
infotexts, in batch order, then the grid made here.

Batch i of a request is itself a request with one batch whose seed and subseed are those batch i would have had
(`rng.batch_seeds`: consecutive seeds, or one seed and consecutive subseeds with variation strength), so each
picture equals the single-worker run's."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from modules import rng


def split(req) -> list:
    """One request per batch of `req` (seeds resolved here, so that -1 means one random draw for the whole job)."""
    seed, subseed = rng.resolve_seed(req.seed), rng.resolve_seed(req.subseed)
    seeds, subseeds = rng.batch_seeds(seed, subseed, req.subseed_strength, req.batch_size * req.n_iter)
    parts = []
    for i in range(req.n_iter):
        first = i * req.batch_size
        parts.append(dataclasses.replace(req, n_iter=1, seed=seeds[first], subseed=subseeds[first],
                                         do_not_save_grid=True))
    return parts


LIST_FIELDS = ("images", "infotexts", "all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds",
               "saved_paths", "saved_infotexts", "warnings")


def merge(req, results: list, engine):
    """The parts' results (in batch order) as one: lists joined, the first part's fields, the grid as the engine
    makes it for a multi-picture job (returned first and saved, by the settings and the request)."""
    from modules import processing

    first = results[0]
    merged = dataclasses.replace(first, **{name: [x for r in results for x in getattr(r, name)]
                                          for name in LIST_FIELDS})
    merged.warnings = list(dict.fromkeys(merged.warnings))
    merged.n_iter = req.n_iter
    merged.index_of_first_image = 0
    merged.interrupted = any(r.interrupted for r in results)
    merged.skipped_batches = sum(r.skipped_batches for r in results)
    merged.elapsed = max(r.elapsed for r in results)
    ctx = SimpleNamespace(opt=lambda name, default=None: engine.settings.get(name, default),
                          outputs=engine._outputs(req))
    processing._grid(ctx, req, merged)
    return merged


def eligible(req, setting_on: bool, idle_workers: int) -> bool:
    return setting_on and getattr(req, "n_iter", 1) > 1 and idle_workers > 1
