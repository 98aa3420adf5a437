"""Layer units for layer-wise reconstruction (LAC, EFRAP), read off the traced graph.

A unit starts at a Conv2d/Linear and takes the chain of its single consumers while they are
BatchNorm or ReLU modules, stopping at the next conv/linear, a residual add or the output
(MQBench ``extract_layer`` with ``pattern: layer``). In a BasicBlock: [conv1, bn1, relu1],
[conv2, bn2] and [downsample conv, bn]; the classifier is [fc]. Units come in topological order.

As in MQBench, where an activation quantizer sits at the *end* of the previous chain, a unit's
input is the already-quantized activation and its output goes through the next quantizer:

- :func:`unit_inputs` caches the quantized input of the unit's first layer, and
  :meth:`Unit.forward` does not quantize it again, so what PDA adds to
  an input (a dense shift of at most γ) reaches the conv as it is, not rounded to whole
  quantization steps. Under ``placement="mqbench"`` the captured input is already the output
  of the producer's :class:`~qcbench.quant.ActQuantizer`, and the layer has no quantizer of its own;
- when the chain ends in a single consumer that quantizes it — a quantized conv/linear's input
  quantizer (``layer_input``: [conv1, bn1, relu1] → conv2) or a post-activation quantizer
  (``mqbench``: also the stem's [conv1, bn1, relu], whose quantized output feeds the residual
  add as well) — that quantizer is the unit's last step (``out_quant``), so the reconstruction
  loss sees the output's quantization error too. A chain that ends at a residual add, a pool
  or the output has none.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from qcbench.quant import QUANT_MODULES, ActQuantizer, QuantTracer

CHAIN_TYPES = (nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.ReLU6, nn.Identity)


@dataclass
class Unit:
    modules: list[str]
    bns: list[str] = field(default_factory=list)
    # the quantized layer whose input quantizer, or the post-activation quantizer, ends the unit
    out_quant: str | None = None

    @property
    def first(self) -> str:
        return self.modules[0]

    @property
    def last(self) -> str:
        return self.modules[-1]

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The unit on an already-quantized input (:func:`unit_inputs`): its first layer does not
        quantize it again; the whole model's forward is untouched."""
        with self.quantized_input(model):
            x = model.get_submodule(self.first)(x)
        for name in self.modules[1:]:
            x = model.get_submodule(name)(x)
        if self.out_quant is not None and (nxt := model.get_submodule(self.out_quant)).quant_enabled:
            x = nxt.quant_input(x)
        return x

    @contextmanager
    def quantized_input(self, model: nn.Module) -> Iterator[None]:
        """Inside the block the unit's first layer takes its input as already quantized."""
        layer = model.get_submodule(self.first)
        before = getattr(layer, "input_quantized", None)
        if before is None:  # a plain (unquantized) layer: nothing to switch
            yield
            return
        layer.input_quantized = True
        try:
            yield
        finally:
            layer.input_quantized = before


def extract_units(model: nn.Module) -> list[Unit]:
    graph = QuantTracer().trace(model)
    mods = dict(model.named_modules())
    calls = [n.target for n in graph.nodes if n.op == "call_module"]
    if len(calls) != len(set(calls)):
        raise ValueError("layer units need every module called once per forward (a module is reused)")
    units = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods[node.target], (nn.Conv2d, nn.Linear)):
            continue
        unit = Unit([node.target])
        cur = node
        while len(cur.users) == 1:
            (nxt,) = cur.users
            if (
                nxt.op != "call_module"
                or not isinstance(mods[nxt.target], CHAIN_TYPES)
                or len(nxt.all_input_nodes) != 1
            ):
                break
            unit.modules.append(nxt.target)
            if isinstance(mods[nxt.target], nn.modules.batchnorm._BatchNorm):
                unit.bns.append(nxt.target)
            cur = nxt
        if len(cur.users) == 1:
            (nxt,) = cur.users
            if (
                nxt.op == "call_module"
                and isinstance(mods[nxt.target], (*QUANT_MODULES, ActQuantizer))
                and len(nxt.all_input_nodes) == 1
            ):
                unit.out_quant = nxt.target
        units.append(unit)
    return units


@torch.no_grad()
def unit_inputs(model: nn.Module, unit: Unit, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The unit's inputs on ``batches``, after its first layer's input quantizer (when it has one
    and quantization is on): what :meth:`Unit.quantized_input` then feeds the unit."""
    layer = model.get_submodule(unit.first)
    xs = capture(model, unit.first, batches, "input")
    if not isinstance(layer, QUANT_MODULES) or not layer.quant_enabled:
        return xs
    return [layer.quant_input(x) for x in xs]


@torch.no_grad()
def capture(model: nn.Module, name: str, batches: list[torch.Tensor], where: str) -> list[torch.Tensor]:
    """Run ``model`` on each batch and keep the ``input`` or ``output`` of module ``name``."""
    if where == "output":
        return capture_outputs(model, [name], batches)[name]
    store: list[torch.Tensor] = []
    mod = model.get_submodule(name)

    class _Stop(Exception):
        pass

    def pre(_m, args):
        store.append(args[0].detach().clone())
        raise _Stop

    handle = mod.register_forward_pre_hook(pre)
    try:
        for x in batches:
            try:
                model(x)
            except _Stop:
                pass
    finally:
        handle.remove()
    return store


@torch.no_grad()
def capture_outputs(model: nn.Module, names: list[str], batches: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """What :func:`capture` (``where="output"``) returns for each module of ``names``, from one
    forward pass per batch instead of one per module: each module's output at its first call,
    the pass stopped once every module has given one."""
    store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    seen: set[str] = set()

    class _Stop(Exception):
        pass

    def hook(name):
        def post(_m, _args, out):
            if name in seen:
                return
            seen.add(name)
            store[name].append(out.detach().clone())
            if len(seen) == len(store):
                raise _Stop

        return post

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in store]
    try:
        for x in batches:
            seen.clear()
            try:
                model(x)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return store
