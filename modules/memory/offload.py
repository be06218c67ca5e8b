"""Weights parked in host memory and brought to the execution device only while they compute.

A part (``model``) or a block (``sequential``) is a *unit*: its parameters and buffers are kept in a store (host
memory, pinned with ``--pin-shared-memory``) while the module itself holds `meta` tensors of the same shapes and
dtypes (as accelerate's hooks do), so nothing of it occupies the device. A forward pre-hook puts the unit's weights
on the execution device just before it computes; in ``model`` mode it stays there until another part needs the
room, in ``sequential`` mode a forward hook drops it again at once. The execution device is a parameter: on CPU
(the tests) "bringing in" hands back the stored tensors themselves, so the picture is bit-identical to the resident
run while the meta tensors show exactly what was resident when.

With ``prefetch`` (Forge's "Swap Method: Async") sequential offload copies the block that ran next last time onto
the device on a side CUDA stream while the current block computes (from pinned memory the copy is truly
asynchronous), so the transfer hides behind the compute; at most two blocks are then on the device.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

PARTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "unet", "vae")


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def module_bytes(module: torch.nn.Module, recurse: bool = True) -> int:
    return sum(tensor_bytes(t) for t in [*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)])


def split(module: torch.nn.Module, limit: int) -> list[tuple[torch.nn.Module, bool]]:
    """The blocks sequential offload streams: `module` whole when it holds at most `limit` bytes (or has no
    children), else its own direct weights (if any) and the blocks of each child; a ModuleList/ModuleDict is never
    a block (nothing calls it: hooks on it would never run). (module, recurse) pairs."""
    children = [c for _, c in module.named_children()]
    container = isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict))  # never called: its items are
    if not children or (module_bytes(module) <= limit and not container):
        return [(module, True)]
    units = [(module, False)] if module_bytes(module, recurse=False) else []
    for child in children:
        units.extend(split(child, limit))
    return units


@dataclass(eq=False)
class Unit:
    """What moves together: (module, attribute, is_parameter) slots and the stored tensor of each."""

    label: str
    slots: list[tuple[torch.nn.Module, str, bool]]
    store: list[torch.Tensor] = field(default_factory=list)
    on_device: bool = False
    pending: tuple | None = None  # (device tensors being copied, the copy's event) once prefetched

    @classmethod
    def of(cls, label: str, module: torch.nn.Module, recurse: bool = True) -> "Unit":
        slots, seen = [], set()
        mods = module.modules() if recurse else [module]
        for mod in mods:
            for name, p in mod._parameters.items():
                if p is not None and (id(mod), name) not in seen:
                    seen.add((id(mod), name))
                    slots.append((mod, name, True))
            for name, b in mod._buffers.items():
                if b is not None and (id(mod), name) not in seen:
                    seen.add((id(mod), name))
                    slots.append((mod, name, False))
        return cls(label, slots)

    @property
    def nbytes(self) -> int:
        return sum(tensor_bytes(t) for t in self.store)


def _get(mod: torch.nn.Module, name: str, is_param: bool) -> torch.Tensor:
    return (mod._parameters if is_param else mod._buffers)[name]


def _put(mod: torch.nn.Module, name: str, is_param: bool, t: torch.Tensor) -> None:
    if is_param and not isinstance(t, torch.nn.Parameter):
        t = torch.nn.Parameter(t, requires_grad=False)
    (mod._parameters if is_param else mod._buffers)[name] = t


def _meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


class Prefetcher:
    """Copies tensors to the device on a side stream, and hands them to the compute stream once copied.

    Off CUDA the copy is made at once (the bookkeeping is the same, which is what the tests check)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def start(self, stored: list[torch.Tensor]) -> tuple:
        if self.stream is None:
            return [t.to(self.device) for t in stored], None
        with torch.cuda.stream(self.stream):
            moved = [t.to(self.device, non_blocking=True) for t in stored]
            event = torch.cuda.Event()
            event.record(self.stream)
        return moved, event

    def finish(self, pending: tuple) -> list[torch.Tensor]:
        moved, event = pending
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in moved:  # used on the compute stream: the allocator must not reuse it before that is done
                t.record_stream(current)
        return moved


class Offloader:
    """Carries out ``model`` or ``sequential`` offload of a model's parts ({"unet": module, ...}) onto `device`."""

    def __init__(self, parts: dict[str, torch.nn.Module], mode: str, device: torch.device, *, pin: bool = False,
                 block_fraction: int = 16, prefetch: bool = False):
        if mode not in ("model", "sequential"):
            raise ValueError(f"offload mode {mode!r}: expected 'model' or 'sequential'")
        self.mode, self.device = mode, torch.device(device)
        self.pin = pin and self.device.type == "cuda"
        self.prefetch = prefetch and mode == "sequential"
        self._prefetcher = Prefetcher(self.device) if self.prefetch else None
        self._after: dict[str, Unit] = {}  # the unit brought in after each one last time (what to prefetch)
        self._previous: Unit | None = None
        self.parts = {name: part for name, part in parts.items() if part is not None}
        self.units: list[Unit] = []
        self.units_of: dict[str, list[Unit]] = {}
        self.last_part = ""  # the part whose weights were brought in last (what an out-of-memory error names)
        self._materialized = False
        self._hooks = []
        for name, part in self.parts.items():
            if mode == "model":
                unit = Unit.of(name, part)
                units = [unit]
                for mod in [part, *part.children()]:  # vae.decode() calls its children, not vae.forward
                    self._hooks.append(mod.register_forward_pre_hook(self._activator(unit)))
            else:
                limit = max(1, module_bytes(part) // block_fraction)
                units = []
                for i, (mod, recurse) in enumerate(split(part, limit)):
                    unit = Unit.of(f"{name}[{i}]", mod, recurse)
                    if not unit.slots:
                        continue
                    units.append(unit)
                    self._hooks.append(mod.register_forward_pre_hook(self._bringer(unit)))
                    self._hooks.append(mod.register_forward_hook(self._dropper(unit)))
            self.units_of[name] = units
            self.units.extend(units)
        for unit in self.units:
            self._park(unit)

    # -- what is where -----------------------------------------------------------------------------------------

    def part_bytes(self, name: str) -> int:
        return sum(u.nbytes for u in self.units_of.get(name, []))

    def largest_block_bytes(self, name: str) -> int:
        return max((u.nbytes for u in self.units_of.get(name, [])), default=0)

    def resident_bytes(self) -> int:
        """Bytes of managed weights on the execution device now (prefetched ones included)."""
        return sum(u.nbytes for u in self.units if u.on_device or u.pending is not None)

    # -- moving ------------------------------------------------------------------------------------------------

    def _park(self, unit: Unit) -> None:
        """Take the unit's current tensors into the store and leave meta tensors in the modules."""
        unit.store = []
        for mod, name, is_param in unit.slots:
            t = _get(mod, name, is_param)
            if t.device.type != "cpu":
                t = t.to("cpu")
            if self.pin and not t.is_pinned():
                t = t.pin_memory()
            unit.store.append(t)
            _put(mod, name, is_param, _meta(t))
        unit.on_device = False

    def bring(self, unit: Unit) -> None:
        self.last_part = unit.label.split("[", 1)[0]
        if self._prefetcher is not None:
            self._learn(unit)
        if unit.on_device:
            return
        if unit.pending is not None:
            tensors, unit.pending = self._prefetcher.finish(unit.pending), None
        else:
            tensors = [stored.to(self.device, non_blocking=self.pin) for stored in unit.store]
        for (mod, name, is_param), t in zip(unit.slots, tensors):
            _put(mod, name, is_param, t)
        unit.on_device = True
        nxt = self._after.get(unit.label)
        if nxt is not None and not nxt.on_device and nxt.pending is None and not self._materialized:
            nxt.pending = self._prefetcher.start(nxt.store)

    def _learn(self, unit: Unit) -> None:
        """Remember which unit followed which: the next job prefetches in the order this one ran."""
        if self._previous is not None and self._previous is not unit:
            self._after[self._previous.label] = unit
        self._previous = unit

    def drop(self, unit: Unit) -> None:
        if not unit.on_device:
            return
        for (mod, name, is_param), stored in zip(unit.slots, unit.store):
            _put(mod, name, is_param, _meta(stored))
        unit.on_device = False

    def drop_all(self) -> None:
        for unit in self.units:
            self.drop(unit)
            unit.pending = None

    def _activator(self, unit: Unit):
        def hook(module, args):
            if not unit.on_device:
                for other in self.units:
                    if other is not unit:
                        self.drop(other)
                self.bring(unit)
        return hook

    def _bringer(self, unit: Unit):
        def hook(module, args):
            self.bring(unit)
        return hook

    def _dropper(self, unit: Unit):
        def hook(module, args, output):
            self.drop(unit)
        return hook

    # -- for code that changes weights in place -------------------------------------------------------------------

    @contextmanager
    def materialized(self):
        """The stored tensors themselves in the modules for the duration (host memory): LoRA patching, merging,
        copying a part's layer into a ControlNet change or read them there; afterwards they are parked again.
        Re-entrant: an inner use (LoRA's apply calling its restore) leaves the parking to the outermost."""
        if self._materialized:
            yield
            return
        self._materialized = True
        self.drop_all()
        for unit in self.units:
            for (mod, name, is_param), stored in zip(unit.slots, unit.store):
                _put(mod, name, is_param, stored)
        try:
            yield
        finally:
            self._materialized = False
            for unit in self.units:
                self._park(unit)

    def release(self) -> None:
        """Hooks removed and every stored tensor back in its module, in host memory: the parts are plain modules
        again (a new plan then parks them its own way, or moves them to the device)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        for unit in self.units:
            for (mod, name, is_param), stored in zip(unit.slots, unit.store):
                _put(mod, name, is_param, stored)
            unit.store, unit.on_device, unit.pending = [], False, None
        self.units, self.units_of = [], {}


def offloader_of(model) -> Offloader | None:
    """The offloader managing a loaded model's parts, if its memory plan offloads."""
    extra = getattr(model, "extra", None)
    return extra.get("offloader") if isinstance(extra, dict) else None


@contextmanager
def weights_in_host_memory(model):
    """Run a block that reads or changes a model's weights directly (not through forward): with offload, the
    stored tensors are put back into the modules for it; without, nothing changes."""
    off = offloader_of(model)
    if off is None:
        yield
        return
    with off.materialized():
        yield
