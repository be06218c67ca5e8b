"""A1111's `modules.extra_networks`: `<name:args>` prompt tags and the registry extensions add their own network
types to. Parsing is ours (modules/networks/extra_networks.py); registered networks are activated by the batch loop
(processing_compat) with A1111's `activate(p, params_list)` / `deactivate(p)`."""
from __future__ import annotations

import logging
from collections import defaultdict

from modules.networks.extra_networks import ExtraNetworkParams, parse_prompt, parse_prompts, re_extra_net  # noqa: F401

log = logging.getLogger(__name__)

extra_network_registry: dict[str, "ExtraNetwork"] = {}
extra_network_aliases: dict[str, "ExtraNetwork"] = {}


class ExtraNetwork:
    def __init__(self, name: str):
        self.name = name

    def activate(self, p, params_list):
        raise NotImplementedError

    def deactivate(self, p):
        raise NotImplementedError


def initialize() -> None:
    extra_network_registry.clear()
    extra_network_aliases.clear()


def register_extra_network(extra_network: ExtraNetwork) -> None:
    extra_network_registry[extra_network.name] = extra_network


def register_extra_network_alias(extra_network: ExtraNetwork, alias: str) -> None:
    extra_network_aliases[alias] = extra_network


def register_default_extra_networks() -> None:
    """LoRA and embeddings are the engine's own; nothing to register."""


def lookup_extra_networks(extra_network_data: dict) -> dict:
    """{ExtraNetwork: [params]} for the registered ones among the parsed tags."""
    res: dict = defaultdict(list)
    for name, params in extra_network_data.items():
        network = extra_network_registry.get(name) or extra_network_aliases.get(name)
        if network is not None:
            res[network] += list(params)
    return dict(res)


def activate(p, extra_network_data: dict) -> None:
    """Call `activate(p, params)` of each registered network named in the tags (and of the others with [])."""
    from modules import script_callbacks

    active = lookup_extra_networks(extra_network_data)
    for network in {*extra_network_registry.values(), *active}:
        try:
            network.activate(p, active.get(network, []))
        except Exception as e:  # noqa: BLE001 - one broken network type must not stop the generation
            script_callbacks.report_error("extra network activate", network.name, e)
    p.extra_network_data = extra_network_data


def deactivate(p, extra_network_data: dict) -> None:
    from modules import script_callbacks

    for network in {*extra_network_registry.values(), *lookup_extra_networks(extra_network_data)}:
        try:
            network.deactivate(p)
        except Exception as e:  # noqa: BLE001
            script_callbacks.report_error("extra network deactivate", network.name, e)


def get_user_metadata(filename, lister=None) -> dict:
    import json
    from pathlib import Path

    path = Path(str(filename)).with_suffix(".json")
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
