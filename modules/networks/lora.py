"""LoRA / LyCORIS networks applied by patching the model's weights in place (A1111's `Lora` extension, by hand).

* :class:`LoraRegistry` lists ``models/Lora`` (and ``models/LyCORIS``) recursively; a name is the file stem (or its
  path relative to the folder without the suffix). Unknown names re-list the folders once before giving up.
* :func:`compute_deltas` turns one file's tensors into full weight deltas ``ΔW`` for the loaded model's modules:
  kohya/A1111 (``lora_unet_*`` in diffusers *and* LDM/sgm naming, ``lora_te_*``, ``lora_te1_*``/``lora_te2_*``,
  ``.alpha``), diffusers/PEFT (``unet.….lora_A/lora_B``, ``text_encoder.…``, old ``…processor.to_q_lora.down``),
  LyCORIS LoCon (conv, optional ``lora_mid``), LoHa (``hada_*``, optional Tucker ``hada_t1/t2``), LoKr
  (``lokr_w1``/``lokr_w1_a/b``, ``lokr_w2``/``lokr_w2_a/b``, optional ``lokr_t2``) and full diffs (``diff``,
  ``diff_b``). The formulas are A1111's (``network_lora``/``network_hada``/``network_lokr``/``lyco_helpers``).
* :func:`apply_networks` sets the model's active set: ``W = W₀ + Σ multiplierᵢ·ΔWᵢ``, always computed from a CPU copy
  of the original ``W₀`` (so nothing accumulates, and removing every network copies ``W₀`` back bit-exactly). It
  only touches the weights when the set or the multipliers change; deltas are cached per file and model, and the
  CPU copies are kept while the model lives (as A1111 keeps its backups), so alternating sets costs one pass.

The applied state lives in ``model.extra`` so it belongs to the model object: a reloaded model starts clean.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from modules.memory.offload import weights_in_host_memory

log = logging.getLogger(__name__)

EXTENSIONS = (".safetensors", ".pt", ".ckpt")
DELTA_CACHE_SIZE = 8

# Recognised tensor-name suffixes → canonical part name. Longest suffix wins.
_SUFFIXES: dict[str, str] = {
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".lora_mid.weight": "mid",
    ".lora_A.weight": "down", ".lora_B.weight": "up",
    ".lora.down.weight": "down", ".lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",
    ".down.weight": "down", ".up.weight": "up",  # XLabs' Flux LoRAs (`processor.qkv_lora1.down.weight`)
    ".alpha": "alpha", ".lora_alpha": "alpha", ".scale": "scale",
    ".hada_w1_a": "hada_w1_a", ".hada_w1_b": "hada_w1_b", ".hada_w2_a": "hada_w2_a", ".hada_w2_b": "hada_w2_b",
    ".hada_t1": "hada_t1", ".hada_t2": "hada_t2",
    ".lokr_w1": "lokr_w1", ".lokr_w1_a": "lokr_w1_a", ".lokr_w1_b": "lokr_w1_b",
    ".lokr_w2": "lokr_w2", ".lokr_w2_a": "lokr_w2_a", ".lokr_w2_b": "lokr_w2_b", ".lokr_t2": "lokr_t2",
    ".diff": "diff", ".diff_b": "diff_b", ".dora_scale": "dora_scale",
}
_SUFFIX_ORDER = sorted(_SUFFIXES, key=len, reverse=True)

# Kohya prefixes → component; dotted (diffusers/PEFT) prefixes → component.
_KOHYA_PREFIXES = (("lora_unet_", "unet"), ("lora_transformer_", "unet"), ("lora_te1_", "te1"), ("lora_te2_", "te2"),
                   ("lora_te3_", "te3"), ("lora_te_", "te1"))
_DOTTED_PREFIXES = (("unet.", "unet"), ("transformer.", "unet"), ("text_encoder_3.", "te3"),
                    ("text_encoder_2.", "te2"), ("text_encoder.", "te1"), ("lora_unet.", "unet"),
                    ("lora_te1.", "te1"), ("lora_te2.", "te2"), ("lora_te.", "te1"))
_COMPONENTS = (("unet", "unet"), ("te1", "text_encoder"), ("te2", "text_encoder_2"))
# Flux/SD3: kohya's te3 is T5 (Flux keeps it where diffusers does, in text_encoder_2; SD3 in text_encoder_3)
_FAMILY_COMPONENTS = {"flux": (("unet", "unet"), ("te1", "text_encoder"), ("te3", "text_encoder_2")),
                      "sd3": (("unet", "unet"), ("te1", "text_encoder"), ("te2", "text_encoder_2"),
                              ("te3", "text_encoder_3"))}


# ---------------------------------------------------------------------------------------------------------------
# Files on disk


@dataclass
class LoraFile:
    name: str  # file stem
    path: Path
    rel: str  # path relative to its folder, forward slashes, without suffix

    @property
    def is_safetensors(self) -> bool:
        return self.path.suffix.lower() == ".safetensors"

    @property
    def alias(self) -> str:
        """The name written into `Lora hashes` (A1111 drops ':' and ',')."""
        return self.name.replace(":", "").replace(",", "")

    def stat(self) -> tuple[float, int]:
        st = self.path.stat()
        return st.st_mtime, st.st_size


class LoraRegistry:
    """LoRA/LyCORIS files under the given folders (recursive), found by name."""

    def __init__(self, dirs: Iterable[Path], hash_cache=None):
        self.dirs = [Path(d) for d in dirs if d is not None]
        self.hash_cache = hash_cache
        self.list_hidden: Callable[[], bool] = lambda: False  # the setting list_hidden_files (the engine's)
        self._files: dict[str, LoraFile] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_paths(cls, paths, hash_cache=None, list_hidden: Callable[[], bool] = lambda: False) -> "LoraRegistry":
        dirs = [paths.lora_dir]
        lyco = getattr(paths, "lycoris_dir", None)
        if lyco is not None and Path(lyco) != Path(paths.lora_dir):
            dirs.append(lyco)
        registry = cls(dirs, hash_cache)
        registry.list_hidden = list_hidden
        return registry

    def refresh(self) -> list[LoraFile]:
        found: dict[str, LoraFile] = {}
        for root in self.dirs:
            if not root.is_dir():
                continue
            hidden = self.list_hidden()
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if hidden or not d.startswith("."))
                for fn in sorted(filenames):
                    p = Path(dirpath) / fn
                    if p.suffix.lower() not in EXTENSIONS or fn.startswith("."):
                        continue
                    rel = p.relative_to(root).with_suffix("").as_posix()
                    entry = LoraFile(name=p.stem, path=p, rel=rel)
                    found.setdefault(p.stem, entry)  # first folder / first path wins for a duplicate stem
                    found.setdefault(rel, entry)
        with self._lock:
            self._files = found
        return self.list()

    def list(self) -> list[LoraFile]:
        seen, out = set(), []
        for entry in self._files.values():
            if entry.path not in seen:
                seen.add(entry.path)
                out.append(entry)
        return sorted(out, key=lambda e: e.rel.lower())

    def find(self, name: str) -> LoraFile | None:
        """By stem or relative path; a miss re-lists the folders once (a file added since start-up is found)."""
        entry = self._files.get(name)
        if entry is None or not entry.path.is_file():
            self.refresh()
            entry = self._files.get(name)
        return entry

    def hash(self, entry: LoraFile) -> str | None:
        """A1111's hash: the addnet hash for .safetensors, else the file's sha256 (cached under `lora/<name>`)."""
        if self.hash_cache is not None:
            return self.hash_cache.sha256(entry.path, "lora/" + entry.name, use_addnet_hash=entry.is_safetensors)
        from modules.hashes import addnet_hash_safetensors, sha256_file

        return addnet_hash_safetensors(entry.path) if entry.is_safetensors else sha256_file(entry.path)

    def shorthash(self, entry: LoraFile) -> str | None:
        h = self.hash(entry)
        return h[:12] if h else None


# ---------------------------------------------------------------------------------------------------------------
# Module index: every name a network file may use for a patchable module of the loaded model


@dataclass
class ModuleIndex:
    modules: dict[tuple[str, str], tuple[str, torch.nn.Module]]  # (component, underscored name) → (dotted, module)
    native: Any = None  # Flux/SD3: flow_lora.NativeLayout, for files named after the release layout

    def lookup(self, component: str, name: str):
        if component != "unet":
            name = name.removeprefix("text_model_")
        return self.modules.get((component, name))


def _patchable(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d))


def build_index(model) -> ModuleIndex:
    from modules.networks.flow_lora import native_layout

    index: dict[tuple[str, str], tuple[str, torch.nn.Module]] = {}
    flow = getattr(model, "is_flow", False)
    for comp, attr in _FAMILY_COMPONENTS.get(getattr(model, "family", ""), _COMPONENTS):
        net = getattr(model, attr, None)
        if net is None:
            continue
        named = dict(net.named_modules())
        for dotted, module in named.items():
            if not _patchable(module):
                continue
            key = dotted.replace(".", "_")
            if comp != "unet":
                key = key.removeprefix("text_model_")
            index[(comp, key)] = (f"{comp}:{dotted}", module)
        if comp == "unet" and not flow:
            for ldm, dotted in _ldm_unet_names(net).items():
                module = named.get(dotted)
                if module is not None and _patchable(module):
                    index.setdefault(("unet", ldm.replace(".", "_")), (f"unet:{dotted}", module))
    return ModuleIndex(index, native_layout(model))


def _ldm_unet_names(unet) -> dict[str, str]:
    """LDM/sgm module path → diffusers module path, by inverting the project's diffusers→LDM exporter."""
    try:
        from modules.models.ldm_export import unet_to_ldm

        diff_keys = list(unet.state_dict().keys())
        ldm_keys = list(unet_to_ldm(unet).keys())  # same order: one LDM key per diffusers key
    except Exception as e:  # noqa: BLE001 - an exotic UNet still works with diffusers-named files
        log.debug("no LDM names for this UNet: %s", e)
        return {}
    out = {}
    for d, l in zip(diff_keys, ldm_keys):
        if d.endswith(".weight") and l.endswith(".weight"):
            out[l[: -len(".weight")]] = d[: -len(".weight")]
    return out


def module_index(model) -> ModuleIndex:
    idx = model.extra.get("lora_index")
    if idx is None:
        idx = model.extra["lora_index"] = build_index(model)
    return idx


# ---------------------------------------------------------------------------------------------------------------
# Delta weights


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix in _SUFFIX_ORDER:
        if key.endswith(suffix):
            return key[: -len(suffix)], _SUFFIXES[suffix]
    return None


def _old_diffusers_name(dotted: str) -> str:
    """`attn1.processor.to_q_lora` (diffusers' pre-PEFT attention processors) → `attn1.to_q`."""
    dotted = dotted.replace(".processor.", ".")
    for old, new in (("to_q_lora", "to_q"), ("to_k_lora", "to_k"), ("to_v_lora", "to_v"),
                     ("to_out_lora", "to_out.0")):
        if dotted.endswith("." + old):
            dotted = dotted[: -len(old)] + new
    return dotted


def _resolve(module_name: str, index: ModuleIndex):
    for prefix, comp in _KOHYA_PREFIXES:
        if module_name.startswith(prefix):
            return index.lookup(comp, module_name[len(prefix):])
    for prefix, comp in _DOTTED_PREFIXES:
        if module_name.startswith(prefix):
            rest = _old_diffusers_name(module_name[len(prefix):])
            return index.lookup(comp, rest.replace(".", "_"))
    rest = module_name.removeprefix("base_model.model.")
    return index.lookup("unet", _old_diffusers_name(rest).replace(".", "_"))  # a bare PEFT UNet adapter


def _f(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float32)


def _rebuild_conventional(up, down, shape, dyn_dim=None):
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    if dyn_dim is not None:
        up = up[:, :dyn_dim]
        down = down[:dyn_dim, :]
    return (up @ down).reshape(shape)


def _rebuild_cp(up, down, mid):
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    return torch.einsum("n m k l, i n, m j -> i j k l", mid, up, down)


def _make_weight_cp(t, wa, wb):
    temp = torch.einsum("i j k l, j r -> i r k l", t, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


def _make_kron(shape, w1, w2):
    if len(w2.shape) == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    return torch.kron(w1, w2.contiguous()).reshape(shape)


def _scale(parts: dict, dim: int | None) -> float:
    if "scale" in parts:
        return float(parts["scale"])
    if dim is not None and "alpha" in parts:
        return float(parts["alpha"]) / dim
    return 1.0


def delta_for(parts: dict[str, torch.Tensor], weight_shape: torch.Size, dyn_dim: int | None = None) -> torch.Tensor:
    """ΔW (float32, CPU, shaped like the module's weight) for one module's tensors; scale included."""
    p = {k: (_f(v) if isinstance(v, torch.Tensor) and k not in ("alpha", "scale") else v) for k, v in parts.items()}
    if "down" in p and "up" in p:
        up, down = p["up"], p["down"]
        dim = down.shape[0]
        if "mid" in p:
            delta = _rebuild_cp(up, down, p["mid"])
        else:
            shape = [up.size(0), down.size(1)] + (list(down.shape[2:]) if down.dim() == 4 else [])
            delta = _rebuild_conventional(up, down, shape, dyn_dim)
    elif "hada_w1_a" in p:
        w1a, w1b, w2a, w2b = p["hada_w1_a"], p["hada_w1_b"], p["hada_w2_a"], p["hada_w2_b"]
        dim = w1b.shape[0]
        if "hada_t1" in p:
            d1 = _make_weight_cp(p["hada_t1"], w1a, w1b)
        else:
            d1 = _rebuild_conventional(w1a, w1b, [w1a.size(0), -1])
        if "hada_t2" in p:
            d2 = _make_weight_cp(p["hada_t2"], w2a, w2b)
        else:
            d2 = _rebuild_conventional(w2a, w2b, [w2a.size(0), -1])
        if d1.dim() == 2 and d2.dim() == 2:
            delta = d1 * d2
        else:
            delta = d1.reshape(weight_shape) * d2.reshape(weight_shape)
    elif "lokr_w1" in p or "lokr_w1_a" in p:
        dim = None
        if "lokr_w1_b" in p:
            dim = p["lokr_w1_b"].shape[0]
        elif "lokr_w2_b" in p:
            dim = p["lokr_w2_b"].shape[0]
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        if "lokr_w2" in p:
            w2 = p["lokr_w2"]
        elif "lokr_t2" in p:
            w2 = _make_weight_cp(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
        else:
            w2 = _rebuild_conventional(p["lokr_w2_a"], p["lokr_w2_b"], [p["lokr_w2_a"].size(0), -1])
        shape = [w1.size(0) * w2.size(0), w1.size(1) * w2.size(1)]
        if len(weight_shape) == 4:
            shape = list(weight_shape)
        delta = _make_kron(shape, w1, w2)
    elif "diff" in p:
        return p["diff"].reshape(weight_shape)
    else:
        raise ValueError("unrecognised tensors: " + ", ".join(sorted(parts)))
    if delta.numel() != torch.Size(weight_shape).numel():
        raise ValueError(f"shape {tuple(delta.shape)} does not fit the model's {tuple(weight_shape)}")
    return delta.reshape(weight_shape) * _scale(p, dim)


@dataclass
class FileDeltas:
    """One file's deltas for one model: target key → (component, param name, module, ΔW)."""

    deltas: dict[str, tuple[str, str, torch.nn.Module, torch.Tensor]]
    unmatched: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    quantized: int = 0  # modules left out because the model keeps them GGUF-quantized (and the file is no LoRA)
    lowrank: dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def group_keys(sd: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    groups: dict[str, dict[str, Any]] = {}
    unknown = []
    for key, value in sd.items():
        split = _split_key(key)
        if split is None:
            unknown.append(key)
            continue
        name, part = split
        groups.setdefault(name, {})[part] = value
    return groups, unknown


def low_rank(parts: dict[str, torch.Tensor], dyn_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(up·scale, down) of a plain linear LoRA, or None for anything else (LoHa, LoKr, conv, Tucker): what a layer
    whose weight cannot be patched (GGUF-quantized) adds while computing, x·downᵀ·upᵀ."""
    if set(parts) - {"up", "down", "alpha", "scale"} or "up" not in parts or "down" not in parts:
        return None
    up, down = _f(parts["up"]), _f(parts["down"])
    if up.dim() != 2 or down.dim() != 2:
        return None
    dim = down.shape[0]
    if dyn_dim is not None and dyn_dim < dim:
        up, down = up[:, :dyn_dim], down[:dyn_dim]
    return up * _scale(parts, dim), down


def _quantized(module: torch.nn.Module) -> bool:
    return hasattr(getattr(module, "weight", None), "quant_type")


def _stored(module: torch.nn.Module, delta: torch.Tensor) -> torch.Tensor:
    """ΔW as the module stores its weight: a scaled fp8 layer keeps W/s, so it gets ΔW/s."""
    scale = getattr(module, "scale_weight", None)
    return delta if scale is None else delta / float(scale)


def compute_deltas(sd: dict[str, torch.Tensor], index: ModuleIndex, dyn_dim: int | None = None) -> FileDeltas:
    groups, unknown = group_keys(sd)
    out = FileDeltas({}, unmatched=list(unknown))
    native: dict[str, torch.Tensor] = {}
    for name, parts in groups.items():
        target_native = index.native.resolve(name) if index.native is not None else None
        if target_native is not None and index.native.quantized:
            pair = low_rank({k: v for k, v in parts.items() if k not in ("diff_b", "dora_scale")}, dyn_dim)
            if pair is None:
                out.quantized += 1
                continue
            up, down = pair
            for dotted, up_part in index.native.split({target_native: up}).items():
                hit = index.lookup("unet", dotted.replace(".", "_"))
                if hit is None:
                    out.unmatched.append(dotted)
                elif _quantized(hit[1]):
                    out.lowrank[hit[0] + ":weight"] = (hit[1], up_part, down)
                else:
                    out.deltas[hit[0] + ":weight"] = ("unet", "weight", hit[1],
                                                      _stored(hit[1], (up_part @ down).reshape(hit[1].weight.shape)))
            continue
        if target_native is not None:
            try:
                weight_parts = {k: v for k, v in parts.items() if k not in ("diff_b", "dora_scale")}
                native[target_native] = delta_for(weight_parts, index.native.shapes[target_native], dyn_dim)
            except (ValueError, RuntimeError, KeyError) as e:
                out.errors.append(f"{name}: {e}")
            continue
        hit = _resolve(name, index)
        if hit is None:
            out.unmatched.append(name)
            continue
        target, module = hit
        comp = target.split(":", 1)[0]
        if _quantized(module):
            pair = low_rank({k: v for k, v in parts.items() if k not in ("diff_b", "dora_scale")}, dyn_dim)
            if pair is None:
                out.quantized += 1
            else:
                out.lowrank[target + ":weight"] = (module, *pair)
            continue
        try:
            if "diff_b" in parts and getattr(module, "bias", None) is not None:
                out.deltas[target + ":bias"] = (comp, "bias", module,
                                                _f(parts["diff_b"]).reshape(module.bias.shape))
            weight_parts = {k: v for k, v in parts.items() if k not in ("diff_b", "dora_scale")}
            if "dora_scale" in parts:
                out.errors.append(f"{name}: DoRA is not supported; applied as plain LoRA")
            if set(weight_parts) - {"alpha", "scale"}:
                delta = _stored(module, delta_for(weight_parts, module.weight.shape, dyn_dim))
                out.deltas[target + ":weight"] = (comp, "weight", module, delta)
        except (ValueError, RuntimeError, KeyError) as e:
            out.errors.append(f"{name}: {e}")
    if native:
        for dotted, delta in index.native.split(native).items():
            hit = index.lookup("unet", dotted.replace(".", "_"))
            if hit is None:
                out.unmatched.append(dotted)
                continue
            target, module = hit
            delta = _stored(module, delta.reshape(module.weight.shape))
            out.deltas[target + ":weight"] = ("unet", "weight", module, delta)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Applying


@dataclass
class ActiveNetwork:
    entry: LoraFile
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0
    dyn_dim: int | None = None
    applied: bool = True  # False when apply_networks refused it (unreadable, nothing matches the model)


@dataclass
class NetworkState:
    """Per model: what is applied, the original weights of every patched parameter, cached deltas."""

    signature: tuple = ()
    backups: dict[str, tuple[torch.nn.Module, str, torch.Tensor]] = field(default_factory=dict)
    active: set[str] = field(default_factory=set)  # targets whose weights differ from their backup now
    cache: "OrderedDict[tuple, FileDeltas]" = field(default_factory=OrderedDict)
    warnings: list[str] = field(default_factory=list)  # of the applied set, repeated while it stays applied
    refused: set[str] = field(default_factory=set)  # paths of the networks of that set that were not applied
    hooks: list = field(default_factory=list)  # forward hooks adding low-rank LoRAs to unpatchable (GGUF) layers


def state_of(model) -> NetworkState:
    st = model.extra.get("lora_state")
    if st is None:
        st = model.extra["lora_state"] = NetworkState()
    return st


def _file_deltas(model, state: NetworkState, net: ActiveNetwork) -> FileDeltas:
    mtime, size = net.entry.stat()
    key = (str(net.entry.path), mtime, size, net.dyn_dim)
    hit = state.cache.get(key)
    if hit is not None:
        state.cache.move_to_end(key)
        return hit
    from modules.models.loader import read_state_dict

    sd = read_state_dict(net.entry.path)
    deltas = compute_deltas(sd, module_index(model), net.dyn_dim)
    state.cache[key] = deltas
    while len(state.cache) > DELTA_CACHE_SIZE:
        state.cache.popitem(last=False)
    return deltas


def _param(module: torch.nn.Module, name: str) -> torch.Tensor:
    return getattr(module, name)


def restore(model, forget: bool = False) -> None:
    """Put back every original weight (bit-exact copies). The copies are kept (as A1111 does) so that switching
    back and forth does not copy the weights again; `forget=True` frees them."""
    state = state_of(model)
    if not state.active and not state.hooks:  # nothing patched: the stored weights need not come in
        if forget:
            state.backups.clear()
        state.signature, state.warnings = (), []
        return
    with weights_in_host_memory(model):
        _restore(model, forget)


def _restore(model, forget: bool) -> None:
    state = state_of(model)
    _remove_hooks(state)
    with torch.no_grad():
        for target in list(state.active):
            module, pname, backup = state.backups[target]
            p = _param(module, pname)
            p.data.copy_(backup.to(p.device))
    state.active.clear()
    if forget:
        state.backups.clear()
    state.signature = ()
    state.warnings = []


def _remove_hooks(state: NetworkState) -> None:
    for handle in state.hooks:
        handle.remove()
    state.hooks = []


def _add_low_rank(state: NetworkState, combined: dict[str, list], device: torch.device | None) -> None:
    """Each GGUF layer a LoRA targets adds Σ mult·(x·downᵀ)·upᵀ to its output; its quantized weight is untouched,
    so removing the hook restores it exactly."""
    for pairs in combined.values():
        module = pairs[0][0]
        dtype = getattr(module, "compute_dtype", None) or torch.float32
        device = device or module.weight.device
        terms = [(down.t().to(device=device, dtype=dtype), up.t().to(device=device, dtype=dtype), mult)
                 for _, up, down, mult in pairs]

        def hook(mod, inputs, output, terms=terms):
            x = inputs[0].to(terms[0][0].dtype)
            for down_t, up_t, mult in terms:
                output = output + ((x @ down_t) @ up_t * mult).to(output.dtype)
            return output

        state.hooks.append(module.register_forward_hook(hook))


def apply_networks(model, networks: list[ActiveNetwork]) -> list[str]:
    """Make `networks` the model's active set (an empty list restores the original weights). Returns warnings.
    Weights an offload plan parks are patched where they are stored (modules/memory/offload.py)."""
    state = state_of(model)
    signature = _signature(networks)
    if signature == state.signature:  # the same set as the last job: nothing to patch (nor to bring in)
        for net in networks:
            net.applied = str(net.entry.path) not in state.refused
        return list(state.warnings)
    with weights_in_host_memory(model):
        return _apply_networks(model, networks, signature)


def _signature(networks: list[ActiveNetwork]) -> tuple:
    signature = []
    for net in networks:
        try:
            mtime, size = net.entry.stat()
        except OSError:
            mtime = size = None
        signature.append((str(net.entry.path), mtime, size, net.te_multiplier, net.unet_multiplier, net.dyn_dim))
    return tuple(signature)


def _apply_networks(model, networks: list[ActiveNetwork], signature: tuple) -> list[str]:
    state = state_of(model)
    if not networks:
        restore(model)
        state.warnings = []
        state.refused = set()
        return []

    warnings: list[str] = []
    refused: set[str] = set()
    combined: dict[str, list[tuple[torch.Tensor, float]]] = {}
    low_rank_combined: dict[str, list] = {}
    where: dict[str, tuple[torch.nn.Module, str]] = {}
    for net in networks:
        net.applied = False
        try:
            fd = _file_deltas(model, state, net)
        except Exception as e:  # noqa: BLE001 - a broken file is a warning, the image is still made
            warnings.append(f"LoRA {net.entry.name}: could not be loaded ({e})")
            refused.add(str(net.entry.path))
            continue
        if fd.quantized:
            warnings.append(f"LoRA {net.entry.name}: {fd.quantized} of its layers are GGUF-quantized in this model "
                            "and were left out (on GGUF checkpoints only plain LoRA layers apply, not LoHa/LoKr)")
        if not fd.deltas and not fd.lowrank:
            if not fd.quantized:
                label = model.spec.label if getattr(model, "spec", None) is not None else "loaded"
                warnings.append(f"LoRA {net.entry.name}: none of its {len(fd.unmatched)} modules match the "
                                f"{label} model (a LoRA for another model family?); not applied")
            refused.add(str(net.entry.path))
            continue
        net.applied = True
        if fd.unmatched:
            log.info("LoRA %s: %d modules not found in the model (e.g. %s)", net.entry.name, len(fd.unmatched),
                     fd.unmatched[0])
        for err in fd.errors[:3]:
            log.warning("LoRA %s: %s", net.entry.name, err)
        for target, (comp, pname, module, delta) in fd.deltas.items():
            mult = net.unet_multiplier if comp == "unet" else net.te_multiplier
            if mult == 0:
                continue
            combined.setdefault(target, []).append((delta, mult))
            where[target] = (module, pname)
        for target, (module, up, down) in fd.lowrank.items():
            if net.unet_multiplier:
                low_rank_combined.setdefault(target, []).append((module, up, down, net.unet_multiplier))

    with torch.no_grad():
        for target in [t for t in state.active if t not in combined]:
            module, pname, backup = state.backups[target]
            p = _param(module, pname)
            p.data.copy_(backup.to(p.device))
            state.active.discard(target)
        for target, parts in combined.items():
            module, pname = where[target]
            p = _param(module, pname).data
            if target not in state.backups:
                state.backups[target] = (module, pname, p.detach().to("cpu", copy=True))
            backup = state.backups[target][2]
            state.active.add(target)
            if p.dtype == torch.float32:
                (delta, mult), rest = parts[0], parts[1:]
                torch.add(backup.to(p.device), delta.to(p.device), alpha=mult, out=p)  # one pass over memory
                for delta, mult in rest:
                    p.add_(delta.to(p.device), alpha=mult)
            else:
                acc = backup.to(device=p.device, dtype=torch.float32)
                for delta, mult in parts:
                    acc.add_(delta.to(p.device), alpha=mult)
                p.copy_(acc)
    _remove_hooks(state)
    _add_low_rank(state, low_rank_combined, getattr(model, "device", None))
    state.signature = signature
    state.warnings = list(warnings)
    state.refused = refused
    return warnings


__all__ = ["LoraRegistry", "LoraFile", "ActiveNetwork", "apply_networks", "restore", "compute_deltas", "delta_for",
           "build_index", "module_index", "state_of"]
