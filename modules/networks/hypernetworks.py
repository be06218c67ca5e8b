"""A1111 hypernetworks (`models/hypernetworks/*.pt`, `<hypernet:name:multiplier>`), on the diffusers UNet.

A hypernetwork file is what A1111's `Hypernetwork.save` writes with `torch.save`: a plain dict whose int keys are
widths (768 for SD1's text context, 1024 SD2, 2048 SDXL, also 320/640/1280 for the UNet's own widths) mapping to a
pair `(state_dict_k, state_dict_v)` of two small MLPs, plus the metadata that says how those MLPs are built
(`layer_structure`, `activation_func`, `is_layer_norm`, `activate_output`, `use_dropout`, `dropout_structure`,
`last_layer_dropout`, ...). :func:`load_file` reads it with `torch.load(weights_only=True)` (a pickle that would run
code is refused, naming the file) and rebuilds the MLPs exactly as A1111's `HypernetworkModule` does, so the
`linear.N.*` keys line up; dropout layers are kept for the indices and do nothing at inference.

Applying follows A1111's attention hijack (`apply_hypernetworks`): in every attention layer of the UNet the input
that feeds `to_k` goes through each active hypernetwork's k-module, `x + mlp_k(x)·multiplier`, and the one feeding
`to_v` through its v-module, in prompt order, only where the file has an entry for that input's width. A1111
does this wherever `context = default(context, x)` is used, so the self-attention layers (`attn1`, whose k/v input
is the hidden state) take part too when the file has their width. Here that is a forward pre-hook on each `to_k` /
`to_v`, installed when the active set changes and removed when a request names none: the UNet's weights are never
touched, and a request without the tag runs the plain UNet.
"""
from __future__ import annotations

import inspect
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

log = logging.getLogger(__name__)

EXTENSION = ".pt"  # A1111 lists `**/*.pt` only
LOADED_CACHE_SIZE = 4


class HypernetworkError(RuntimeError):
    """A hypernetwork file could not be used; the message names the file and says why."""


# ---------------------------------------------------------------------------------------------------------------
# The MLP, as A1111 builds it


def _activation_classes() -> dict[str, type]:
    """A1111's `HypernetworkModule.activation_dict`: its own names ("swish" is Hardswish there) updated with every
    class of `torch.nn.modules.activation` by lower-case name."""
    classes: dict[str, type] = {"linear": torch.nn.Identity, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU,
                                "elu": torch.nn.ELU, "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh,
                                "sigmoid": torch.nn.Sigmoid}
    for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass):
        if cls.__module__ == "torch.nn.modules.activation":
            classes[name.lower()] = cls
    return classes


ACTIVATIONS = _activation_classes()


def dropout_structure_for(layer_structure, use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """A1111's `parse_dropout_structure` (files written before `dropout_structure` was saved)."""
    layers = list(layer_structure) if layer_structure is not None else [1, 2, 1]
    if not use_dropout:
        return [0] * len(layers)
    values = [0] + [0.3] * (len(layers) - 3)
    values.append(0.3 if last_layer_dropout else 0)
    values.append(0)
    return values


@dataclass(frozen=True)
class Structure:
    """How the two MLPs of every width are built (the file's metadata, with A1111's defaults)."""

    layer_structure: tuple[float, ...]
    activation_func: str | None
    add_layer_norm: bool
    activate_output: bool
    dropout_structure: tuple[float, ...]

    @classmethod
    def from_file(cls, data: Mapping, what: str) -> "Structure":
        layers = data.get("layer_structure", [1, 2, 1])
        if layers is None:  # written by a trainer that left it unset; A1111's default
            layers = [1, 2, 1]
        try:
            layers = tuple(float(x) for x in layers)
        except (TypeError, ValueError):
            raise HypernetworkError(f"{what}: layer_structure {layers!r} is not a list of numbers") from None
        if len(layers) < 2 or layers[0] != 1 or layers[-1] != 1:
            raise HypernetworkError(f"{what}: layer_structure {list(layers)} must start and end with 1")
        act = data.get("activation_func", None)
        if act is not None:
            if not isinstance(act, str):
                raise HypernetworkError(f"{what}: activation_func {act!r} is not a name")
            act = act.lower()
            if act not in ACTIVATIONS:
                raise HypernetworkError(f"{what}: unsupported activation function {act!r}")
        dropout = data.get("dropout_structure", None)
        use_dropout = bool(dropout is not None and any(dropout)) or bool(data.get("use_dropout", False))
        if dropout is None:
            dropout = dropout_structure_for(layers, use_dropout, bool(data.get("last_layer_dropout", False)))
        try:
            dropout = tuple(float(x) for x in dropout)
        except (TypeError, ValueError):
            raise HypernetworkError(f"{what}: dropout_structure {dropout!r} is not a list of numbers") from None
        if len(dropout) < len(layers):
            raise HypernetworkError(f"{what}: dropout_structure {list(dropout)} is shorter than layer_structure "
                                    f"{list(layers)}")
        if any(p >= 1 for p in dropout):  # A1111 asserts 0 < p < 1 where p > 0 (a p <= 0 adds no dropout)
            raise HypernetworkError(f"{what}: dropout_structure {list(dropout)} has a probability of 1 or more")
        return cls(layers, act, bool(data.get("is_layer_norm", False)), bool(data.get("activate_output", True)),
                   dropout)


class HypernetworkModule(torch.nn.Module):
    """One MLP (k or v) of one width; `forward(x, m) = x + linear(x)·m` (A1111's `HypernetworkModule`).

    The `linear` Sequential holds the same layers in the same order as A1111's (Linear, then the activation except
    after the last Linear unless `activate_output`, then LayerNorm if `is_layer_norm`, then Dropout where the
    dropout structure says), so a state dict A1111 saved loads key for key."""

    def __init__(self, dim: int, structure: Structure):
        super().__init__()
        layers = structure.layer_structure
        act = structure.activation_func
        modules: list[torch.nn.Module] = []
        for i in range(len(layers) - 1):
            modules.append(torch.nn.Linear(int(dim * layers[i]), int(dim * layers[i + 1])))
            last = i >= len(layers) - 2
            if act is not None and act != "linear" and not (last and not structure.activate_output):
                modules.append(ACTIVATIONS[act]())
            if structure.add_layer_norm:
                modules.append(torch.nn.LayerNorm(int(dim * layers[i + 1])))
            if structure.dropout_structure[i + 1] > 0:
                modules.append(torch.nn.Dropout(p=structure.dropout_structure[i + 1]))
        self.linear = torch.nn.Sequential(*modules)
        self.eval()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        return x + self.linear(x) * multiplier


_OLD_KEYS = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
             "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}


def _fill(module: HypernetworkModule, sd: Any, what: str) -> None:
    if not isinstance(sd, Mapping):
        raise HypernetworkError(f"{what}: holds {type(sd).__name__}, not a state dict")
    sd = {_OLD_KEYS.get(k, k): v for k, v in sd.items()}  # the first hypernetworks' names (A1111 renames them too)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:4]) + (" …" if len(missing) > 4 else ""))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:4]) + (" …" if len(unexpected) > 4 else ""))
        raise HypernetworkError(f"{what}: its weights do not fit the layers its metadata describes "
                                f"({'; '.join(parts)})")
    for key, ref in expected.items():
        value = sd[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(ref.shape):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise HypernetworkError(f"{what}: {key} is {got}, the layers its metadata describes need "
                                    f"{tuple(ref.shape)}")
    module.load_state_dict({k: v.detach().to(torch.float32) for k, v in sd.items()})


# ---------------------------------------------------------------------------------------------------------------
# Reading files


@dataclass
class Hypernetwork:
    """A loaded file: per width, the (k, v) modules. Attribute names follow A1111's `Hypernetwork`."""

    name: str
    filename: str
    layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]]
    structure: Structure
    step: int = 0
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    optional_info: str | None = None
    multiplier: float = 1.0  # of the current application (A1111 keeps it on the modules)

    @property
    def layer_structure(self):
        return list(self.structure.layer_structure)

    @property
    def activation_func(self):
        return self.structure.activation_func

    @property
    def add_layer_norm(self):
        return self.structure.add_layer_norm

    def to(self, device) -> "Hypernetwork":
        for pair in self.layers.values():
            for module in pair:
                module.to(device)
        return self


def read_pickle(path: Path) -> Any:
    """`torch.load(weights_only=True)` of a hypernetwork file; a pickle that wants to run code or build objects is
    refused with the checkpoint loader's words (`UnsafeCheckpointError`, the file named), a damaged one is a
    `HypernetworkError`."""
    import pickle

    from modules.models import loader

    path = Path(path)
    if not path.is_file():
        raise HypernetworkError(f"{path.name}: file not found")
    try:
        with torch.serialization.safe_globals(loader._ckpt_safe_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = loader._unpickling_detail(e)
        referenced = loader._pickle_globals(path)
        suspicious = sorted(referenced - loader._HARMLESS_GLOBALS)
        if not suspicious and (referenced or "global" not in detail.lower()):
            raise HypernetworkError(f"{path.name}: not a readable hypernetwork file (truncated or corrupt: "
                                    f"{detail})") from None
        if suspicious:
            detail = f"it references {', '.join(suspicious[:5])}"
        raise loader.UnsafeCheckpointError(
            f"{path.name}: refused to load: the pickle wants to run code or build objects that are not plain "
            f"tensors ({detail}). Only use hypernetworks from a trusted source.") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds on damaged or foreign files
        raise HypernetworkError(f"{path.name}: not a readable hypernetwork file (truncated or corrupt: "
                                f"{type(e).__name__}: {str(e)[:300]})") from None


def load_file(path: Path, name: str | None = None) -> Hypernetwork:
    """Read and rebuild one A1111 hypernetwork file (CPU, float32). Raises HypernetworkError /
    UnsafeCheckpointError with a message naming the file."""
    path = Path(path)
    what = path.name
    data = read_pickle(path)
    if not isinstance(data, Mapping):
        raise HypernetworkError(f"{what}: holds {type(data).__name__}, not an A1111 hypernetwork")
    widths = {k: v for k, v in data.items() if type(k) is int}
    if not widths:
        keys = ", ".join(sorted(str(k) for k in data)[:5])
        raise HypernetworkError(f"{what}: no layers (no width keys such as 768; it holds {keys or 'nothing'}); "
                                "not an A1111 hypernetwork (a LoRA or an embedding?)")
    structure = Structure.from_file(data, what)
    layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]] = {}
    for width, pair in sorted(widths.items()):
        if width <= 0 or not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise HypernetworkError(f"{what}: entry {width} is not a (k, v) pair of state dicts")
        try:
            modules = (HypernetworkModule(width, structure), HypernetworkModule(width, structure))
        except (TypeError, ValueError, RuntimeError) as e:  # e.g. an activation class that needs arguments
            raise HypernetworkError(f"{what}: cannot build its layers ({e})") from None
        for module, sd, which in zip(modules, pair, "kv"):
            _fill(module, sd, f"{what} [{width}, {which}]")
        layers[width] = modules

    def text(key):
        value = data.get(key)
        return value if isinstance(value, str) else None

    step = data.get("step", 0)
    return Hypernetwork(name=name or path.stem, filename=str(path), layers=layers, structure=structure,
                        step=step if isinstance(step, int) else 0, sd_checkpoint=text("sd_checkpoint"),
                        sd_checkpoint_name=text("sd_checkpoint_name"), optional_info=text("optional_info"))


# ---------------------------------------------------------------------------------------------------------------
# Files on disk


@dataclass
class HypernetworkFile:
    name: str  # file stem (A1111's name)
    path: Path
    rel: str  # path relative to its folder, forward slashes, without suffix

    def stat(self) -> tuple[float, int]:
        st = self.path.stat()
        return st.st_mtime, st.st_size


class HypernetworkRegistry:
    """`*.pt` files under the hypernetwork folder(s), recursive; found by stem (exact, then any case) or relative
    path. Loaded files are kept (a few, by path + mtime + size), as A1111 keeps its loaded hypernetworks."""

    def __init__(self, dirs: Iterable[Path]):
        self.dirs = [Path(d) for d in dirs if d is not None]
        self._files: list[HypernetworkFile] = []
        self._by_name: dict[str, HypernetworkFile] = {}
        self._lock = threading.Lock()
        self._loaded: "OrderedDict[tuple, Hypernetwork]" = OrderedDict()

    @classmethod
    def from_paths(cls, paths) -> "HypernetworkRegistry":
        return cls([paths.hypernetwork_dir])

    def refresh(self) -> list[HypernetworkFile]:
        found: list[HypernetworkFile] = []
        for root in self.dirs:
            if not root.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for fn in filenames:
                    p = Path(dirpath) / fn
                    if p.suffix.lower() != EXTENSION or fn.startswith(".") or p.stem == "None":  # A1111 skips None
                        continue
                    found.append(HypernetworkFile(p.stem, p, p.relative_to(root).with_suffix("").as_posix()))
        found.sort(key=lambda e: str(e.path).lower())  # A1111: sorted(glob(...), key=str.lower)
        by_name: dict[str, HypernetworkFile] = {}
        for entry in found:
            by_name.setdefault(entry.name, entry)
            by_name.setdefault(entry.rel, entry)
        with self._lock:
            self._files, self._by_name = found, by_name
        return self.list()

    def list(self) -> list[HypernetworkFile]:
        """One entry per name (the first in A1111's order), as A1111's `shared.hypernetworks` dict has."""
        seen, out = set(), []
        for entry in self._files:
            if entry.name not in seen:
                seen.add(entry.name)
                out.append(entry)
        return out

    def names(self) -> dict[str, str]:
        """A1111's `shared.hypernetworks`: {name: path}."""
        return {e.name: str(e.path) for e in self.list()}

    def _lookup(self, name: str) -> HypernetworkFile | None:
        entry = self._by_name.get(name)
        if entry is None:
            low = name.lower()
            entry = next((e for key, e in self._by_name.items() if key.lower() == low), None)
        return entry

    def find(self, name: str) -> HypernetworkFile | None:
        """By stem or relative path, exact then case-insensitive; a miss re-lists the folders once."""
        name = (name or "").strip()
        if not name:
            return None
        entry = self._lookup(name)
        if entry is None or not entry.path.is_file():
            self.refresh()
            entry = self._lookup(name)
        return entry

    def load(self, entry: HypernetworkFile) -> Hypernetwork:
        mtime, size = entry.stat()
        key = (str(entry.path), mtime, size)
        with self._lock:
            hit = self._loaded.get(key)
            if hit is not None:
                self._loaded.move_to_end(key)
                return hit
        net = load_file(entry.path, entry.name)
        with self._lock:
            self._loaded[key] = net
            while len(self._loaded) > LOADED_CACHE_SIZE:
                self._loaded.popitem(last=False)
        return net


# ---------------------------------------------------------------------------------------------------------------
# Applying to a model


@dataclass
class ActiveHypernetwork:
    entry: HypernetworkFile
    multiplier: float = 1.0
    net: Hypernetwork | None = None  # set once loaded


@dataclass
class HookState:
    """Per model: the hooks of the active set and what that set was."""

    signature: tuple = ()
    handles: list = field(default_factory=list)
    active: list[Hypernetwork] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def state_of(model) -> HookState:
    st = model.extra.get("hypernet_state")
    if st is None:
        st = model.extra["hypernet_state"] = HookState()
    return st


def attention_layers(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every attention module of the UNet with separate k and v projections (diffusers' `Attention`: attn1 and
    attn2 of each transformer block), A1111's hijacked CrossAttention layers."""
    out = []
    for name, module in unet.named_modules():
        if all(isinstance(getattr(module, a, None), torch.nn.Module) for a in ("to_q", "to_k", "to_v")):
            out.append((name, module))
    return out


def _pre_hook(chain: list[tuple[Hypernetwork, float]], which: int):
    """`args[0] → x + m·mlp(x)` for each (network, m) of the chain that has a module for x's width; computed in
    float32 (as A1111 does with `cond_cast_float`) and returned in x's dtype."""

    def hook(_module, args):
        x = args[0]
        width = x.shape[-1]
        y = None
        for net, mult in chain:
            pair = net.layers.get(width)
            if pair is None:
                continue
            mlp = pair[which]
            if y is None:
                y = x.to(torch.float32)
            weight = mlp.linear[0].weight
            if weight.device != y.device:
                mlp.to(y.device)
            y = mlp(y, mult)
        if y is None:
            return None
        return (y.to(x.dtype), *args[1:])

    return hook


def remove(model) -> None:
    """Take every hypernetwork hook off the model (the plain UNet again)."""
    state = state_of(model)
    for handle in state.handles:
        handle.remove()
    state.handles = []
    state.active = []
    state.signature = ()
    state.warnings = []


def apply(model, registry: HypernetworkRegistry | None, wanted: list[ActiveHypernetwork]) -> list[str]:
    """Make `wanted` (in prompt order) the model's active hypernetworks; an empty list removes them. Returns
    warnings (a file that cannot be used is one, and the image is made without it)."""
    state = state_of(model)
    signature = []
    for item in wanted:
        try:
            mtime, size = item.entry.stat()
        except OSError:
            mtime = size = None
        signature.append((str(item.entry.path), mtime, size, float(item.multiplier)))
    signature = tuple(signature)
    if signature == state.signature:
        return list(state.warnings)
    remove(model)
    if not wanted:
        return []
    warnings: list[str] = []
    if getattr(model, "is_flow", False) or getattr(model, "unet", None) is None:
        label = model.spec.label if getattr(model, "spec", None) is not None else "this"
        warnings.append(f"Hypernetworks apply to SD 1.x/2.x/SDXL UNets, not to {label} models; "
                        f"{', '.join(w.entry.name for w in wanted)} not applied")
        state.signature, state.warnings = signature, list(warnings)
        return warnings
    chain: list[tuple[Hypernetwork, float]] = []
    for item in wanted:
        try:
            net = registry.load(item.entry) if registry is not None else load_file(item.entry.path, item.entry.name)
        except Exception as e:  # noqa: BLE001 - a broken file is a warning, the image is still made
            warnings.append(f"Hypernetwork {item.entry.name}: could not be loaded ({e})")
            continue
        item.net = net
        if item.multiplier == 0:
            continue  # x + 0·f(x) is x
        chain.append((net, float(item.multiplier)))
    layers = attention_layers(model.unet)
    widths = {int(m.to_k.in_features) for _, m in layers if hasattr(m.to_k, "in_features")}
    widths |= {int(m.to_v.in_features) for _, m in layers if hasattr(m.to_v, "in_features")}
    for net, _mult in chain:
        if widths and not widths & set(net.layers):
            label = model.spec.label if getattr(model, "spec", None) is not None else "loaded"
            warnings.append(f"Hypernetwork {net.name}: none of its widths ({', '.join(map(str, sorted(net.layers)))}) "
                            f"occur in the {label} model (made for another model family?); it does nothing here")
    chain = [(net, mult) for net, mult in chain if not widths or widths & set(net.layers)]
    if chain:
        k_hook, v_hook = _pre_hook(chain, 0), _pre_hook(chain, 1)
        for _name, module in layers:
            state.handles.append(module.to_k.register_forward_pre_hook(k_hook))
            state.handles.append(module.to_v.register_forward_pre_hook(v_hook))
    for net, mult in chain:
        net.multiplier = mult
    state.active = [net for net, _ in chain]
    state.signature = signature
    state.warnings = list(warnings)
    return warnings


def hook_into(networks: Iterable[torch.nn.Module], model) -> list:
    """The model's active hypernetworks also in other networks' attention layers (the ControlNets guiding it: A1111
    hijacks every CrossAttention, theirs included). Returns the hook handles; remove them when the job ends."""
    chain = [(net, float(net.multiplier)) for net in active(model)]
    if not chain:
        return []
    k_hook, v_hook = _pre_hook(chain, 0), _pre_hook(chain, 1)
    handles = []
    for network in networks:
        for _name, layer in attention_layers(network):
            handles.append(layer.to_k.register_forward_pre_hook(k_hook))
            handles.append(layer.to_v.register_forward_pre_hook(v_hook))
    return handles


def active(model) -> list[Hypernetwork]:
    """The hypernetworks hooked into `model` now (A1111's `shared.loaded_hypernetworks`)."""
    st = model.extra.get("hypernet_state") if model is not None else None
    return list(st.active) if st is not None else []


__all__ = ["HypernetworkRegistry", "HypernetworkFile", "Hypernetwork", "HypernetworkModule", "HypernetworkError",
           "ActiveHypernetwork", "Structure", "load_file", "read_pickle", "apply", "remove", "active", "hook_into",
           "attention_layers", "ACTIVATIONS", "dropout_structure_for"]
