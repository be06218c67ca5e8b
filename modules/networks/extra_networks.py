"""A1111's extra-network prompt tags: `<lora:name:te[:unet[:dyn]]>` (also `te=`, `unet=`, `dyn=`), `<lyco:…>`,
`<hypernet:name[:multiplier]>`.

:func:`parse_prompt` / :func:`parse_prompts` have A1111's semantics (every `<type:args>` tag is removed from the
text before encoding; the networks of a batch are those of its first prompt). :func:`activate` makes the tags of a
request the model's active LoRA set and its active hypernetworks (modules/networks/hypernetworks.py); a request
without tags restores the original weights and takes the hypernetwork hooks off (lazily: nothing needs to be undone
after a generation).
"""
from __future__ import annotations

import logging
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

re_extra_net = re.compile(r"<(\w+):([^>]+)>")

LORA_TYPES = ("lora", "lyco")
HYPERNET_TYPES = ("hypernet",)


@dataclass
class ExtraNetworkParams:
    """A1111's ExtraNetworkParams: `items` split on ':'; `k=v` items are named, the rest positional."""

    items: list[str] = field(default_factory=list)
    positional: list[str] = field(default_factory=list)
    named: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not self.positional and not self.named:
            for item in self.items:
                if "=" in item:
                    k, v = item.split("=", 1)
                    self.named[k.strip()] = v.strip()
                else:
                    self.positional.append(item)


def parse_prompt(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    res: dict[str, list[ExtraNetworkParams]] = defaultdict(list)

    def found(m: re.Match) -> str:
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, found, prompt), res


def parse_prompts(prompts: list[str]) -> tuple[list[str], dict[str, list[ExtraNetworkParams]]]:
    """Tags removed from every prompt; the network data of the first prompt (as A1111)."""
    res, data = [], None
    for prompt in prompts:
        updated, parsed = parse_prompt(prompt)
        if data is None:
            data = parsed
        res.append(updated)
    return res, dict(data or {})


@dataclass
class Activation:
    prompts: list[str]
    infotext: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    networks: list = field(default_factory=list)  # [lora.ActiveNetwork]
    hypernetworks: list = field(default_factory=list)  # [hypernetworks.ActiveHypernetwork], applied, prompt order


def _num(value: str, kind, default, what: str, warnings: list[str]):
    try:
        return kind(value)
    except (TypeError, ValueError):
        warnings.append(f"LoRA {what}: {value!r} is not a number; using {default}")
        return default


def lora_params(params: ExtraNetworkParams, warnings: list[str]) -> tuple[str, float, float, int | None]:
    """(name, te multiplier, unet multiplier, dyn dim) with A1111's defaults: unet defaults to te, te to 1."""
    pos, named = params.positional, params.named
    name = pos[0].strip() if pos else ""
    te = _num(pos[1], float, 1.0, name, warnings) if len(pos) > 1 else 1.0
    te = _num(named["te"], float, te, name, warnings) if "te" in named else te
    unet = _num(pos[2], float, te, name, warnings) if len(pos) > 2 else te
    unet = _num(named["unet"], float, unet, name, warnings) if "unet" in named else unet
    dyn = _num(pos[3], int, None, name, warnings) if len(pos) > 3 else None
    dyn = _num(named["dyn"], int, dyn, name, warnings) if "dyn" in named else dyn
    return name, te, unet, dyn


def hypernet_params(params: ExtraNetworkParams, warnings: list[str]) -> tuple[str, float]:
    """(name, multiplier) of a `<hypernet:name[:multiplier]>` tag (A1111: the first two items, multiplier 1.0)."""
    items = params.items
    name = items[0].strip() if items else ""
    mult = 1.0
    if len(items) > 1:
        try:
            mult = float(items[1])
        except (TypeError, ValueError):
            warnings.append(f"Hypernetwork {name}: {items[1]!r} is not a number; using 1.0")
    return name, mult


def _activate_hypernetworks(ctx, model, prompts, data, out: Activation) -> None:
    """The `<hypernet:…>` tags (and the setting "Add hypernetwork to prompt", `sd_hypernetwork`) → the model's
    active hypernetworks, in prompt order; none → the hooks come off."""
    from modules.networks import hypernetworks

    registry = getattr(ctx, "hypernetworks", None)
    wanted: list[hypernetworks.ActiveHypernetwork] = []
    for params in data.get("hypernet", []):
        name, mult = hypernet_params(params, out.warnings)
        entry = registry.find(name) if registry is not None and name else None
        if entry is None:
            out.warnings.append(f"Hypernetwork not found: {name!r}")
            continue
        wanted.append(hypernetworks.ActiveHypernetwork(entry, mult))
    extra = ctx.opt("sd_hypernetwork", "None") if ctx is not None and not ctx.opt("disable_extra_networks", False) \
        else "None"
    if extra and extra != "None":
        # A1111 (extra_networks_hypernet): unless the prompt names it already, the tag is added to every prompt
        # (so the infotext's prompt carries it) with the default multiplier, and the network applied last.
        entry = registry.find(extra) if registry is not None else None
        if entry is None:
            out.warnings.append(f"Hypernetwork not found: {extra!r} (setting \"Add hypernetwork to prompt\")")
        elif not any(w.entry.path == entry.path for w in wanted):
            mult = ctx.opt("extra_networks_default_multiplier", 1.0)
            tag = f"<hypernet:{extra}:{mult}>"
            if isinstance(prompts, list):
                prompts[:] = [f"{p}{tag}" for p in prompts]
            try:
                wanted.append(hypernetworks.ActiveHypernetwork(entry, float(mult)))
            except (TypeError, ValueError):
                wanted.append(hypernetworks.ActiveHypernetwork(entry, 1.0))
    out.warnings.extend(hypernetworks.apply(model, registry, wanted))
    out.hypernetworks = [w for w in wanted if w.net is not None]


def activate(ctx, model, prompts: list[str]) -> Activation:
    """Strip the tags from `prompts`, apply the LoRAs and hypernetworks they name to `model`, return what infotext
    and the result need. Never raises for a bad tag or file: those become warnings (also logged).

    With the setting "Add hypernetwork to prompt" (`sd_hypernetwork`), its tag is appended to each of `prompts`
    in place, as A1111 appends it to `p.all_prompts`, so the infotext written from them records it."""
    from modules.networks import lora

    cleaned, data = parse_prompts(list(prompts))
    out = Activation(prompts=cleaned)
    registry = getattr(ctx, "loras", None)
    if ctx is not None and ctx.opt("disable_extra_networks", False):
        data = {}
    registered = getattr(sys.modules.get("modules.a1111.extra_networks"), "extra_network_registry", {})
    for kind in data:  # an extension's own type is the extension's to use
        if kind not in LORA_TYPES and kind not in HYPERNET_TYPES and kind not in registered:
            out.warnings.append(f"Extra network type '{kind}' is not supported; its tag was ignored")
    wanted: list[lora.ActiveNetwork] = []
    for kind in LORA_TYPES:
        for params in data.get(kind, []):
            name, te, unet, dyn = lora_params(params, out.warnings)
            entry = registry.find(name) if registry is not None and name else None
            if entry is None:
                out.warnings.append(f"LoRA not found: {name!r} (looked in models/Lora and models/LyCORIS)")
                continue
            wanted.append(lora.ActiveNetwork(entry, te, unet, dyn))
    out.warnings.extend(lora.apply_networks(model, wanted))
    out.networks = [net for net in wanted if net.applied]  # a refused one is a warning, not in the infotext
    hashes = []
    for net in out.networks:
        try:
            short = registry.shorthash(net.entry)
        except OSError:
            short = None
        if short:
            hashes.append(f"{net.entry.alias}: {short}")
    if hashes:
        out.infotext["Lora hashes"] = ", ".join(dict.fromkeys(hashes))
    _activate_hypernetworks(ctx, model, prompts, data, out)  # A1111 1.10 writes no infotext key: the tag stays
    for w in out.warnings:
        log.warning(w)
    return out


__all__ = ["ExtraNetworkParams", "parse_prompt", "parse_prompts", "activate", "Activation", "lora_params",
           "hypernet_params"]
