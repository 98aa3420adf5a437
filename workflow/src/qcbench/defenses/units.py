"""Layer units for layer-wise reconstruction (LAC, EFRAP), read off the traced graph.

A unit starts at a Conv2d/Linear and takes the chain of its single consumers while they are
BatchNorm or ReLU modules, stopping at the next conv/linear, a residual add or the output
(MQBench ``extract_layer`` with ``pattern: layer``). In a BasicBlock: [conv1, bn1, relu1],
[conv2, bn2] and [downsample conv, bn]; the classifier is [fc]. Units come in topological order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from qcbench.quant import QUANT_MODULES

CHAIN_TYPES = (nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.ReLU6, nn.Identity)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QUANT_MODULES) or super().is_leaf_module(m, qualname)


@dataclass
class Unit:
    modules: list[str]
    bns: list[str] = field(default_factory=list)

    @property
    def first(self) -> str:
        return self.modules[0]

    @property
    def last(self) -> str:
        return self.modules[-1]

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        for name in self.modules:
            x = model.get_submodule(name)(x)
        return x


def extract_units(model: nn.Module) -> list[Unit]:
    graph = _Tracer().trace(model)
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
        units.append(unit)
    return units


@torch.no_grad()
def capture(model: nn.Module, name: str, batches: list[torch.Tensor], where: str) -> list[torch.Tensor]:
    """Run ``model`` on each batch and keep the ``input`` or ``output`` of module ``name``."""
    store: list[torch.Tensor] = []
    mod = model.get_submodule(name)

    class _Stop(Exception):
        pass

    def pre(_m, args):
        store.append(args[0].detach().clone())
        raise _Stop

    def post(_m, _args, out):
        store.append(out.detach().clone())
        raise _Stop

    handle = mod.register_forward_pre_hook(pre) if where == "input" else mod.register_forward_hook(post)
    try:
        for x in batches:
            try:
                model(x)
            except _Stop:
                pass
    finally:
        handle.remove()
    return store
