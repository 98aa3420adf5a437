"""The paper's figures, drawn from the pipeline's own models and collated files.

The contract mirrors the tables' (:mod:`qcbench.tables`):

- a figure is a function registered with ``@register_figure(name, inputs=fn)``; ``inputs(config,
  params)`` maps input names to the files it reads (models, data, collated Parquet), so the one
  generic ``figure`` rule (workflow/rules/report.smk) can ask the DAG for them;
- ``params`` is the figure's config entry ``figures.<name>`` (which cell to look at: attack, bits,
  seed, and the figure's own knobs); a figure without a config entry is not drawn;
- the function takes a :class:`FigureContext` and returns a :class:`FigureResult`: a matplotlib
  figure (Agg), its caption and the numbers it measured; :func:`save_figure` writes PNG, PDF and a
  JSON of caption + numbers, each atomically.

Registered: ``fig1`` (backdoor-important neurons, FP vs quantized), ``fig2`` (LAC on benign /
mixed / poisoned data, from ``lac_curve.parquet``), ``fig3`` (a layer's activations for benign,
poisoned and PDA-adjusted inputs), ``fig4`` (Grad-CAM before/after the defense, t-SNE of
penultimate features).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from qcbench._registry import Registry  # noqa: E402

FIGURES = Registry("figure")
BENIGN, POISONED, PDA_C = "tab:blue", "tab:red", "tab:green"


@dataclass
class FigureContext:
    """What a figure function sees: its name, the workflow config, its own config entry and the
    paths of the inputs it declared."""

    name: str
    config: Mapping
    params: Mapping
    inputs: Mapping[str, str]


@dataclass
class FigureResult:
    figure: plt.Figure
    caption: str
    numbers: dict = field(default_factory=dict)


def register_figure(name: str, inputs: Callable[[Mapping, Mapping], dict[str, str]]) -> Callable:
    """Register ``fn(ctx: FigureContext) -> FigureResult`` as figure ``name``; ``inputs(config,
    params)`` returns its input files (paths relative to the workflow's working directory)."""

    def deco(fn: Callable) -> Callable:
        fn.figure_inputs = inputs
        return FIGURES.register(name)(fn)

    return deco


def figure_params(name: str, config: Mapping) -> dict:
    """The config entry ``figures.<name>``; a figure without one is an error."""
    params = (config.get("figures") or {}).get(name)
    if params is None:
        raise KeyError(f"config key 'figures.{name}' is missing: figure {name!r} does not know which cell to draw")
    return dict(params)


def figure_names(config: Mapping) -> list[str]:
    """Registered figures that have a config entry (so `all` draws them)."""
    figs = config.get("figures") or {}
    return [n for n in FIGURES.names() if figs.get(n) is not None]  # null: not drawn


def config_errors(config: Mapping) -> list[str]:
    """What the schema cannot check in ``figures``: the named attack/defense/dataset/arch exist."""
    out = []
    for name, params in (config.get("figures") or {}).items():
        if name not in FIGURES:
            out.append(f"config key 'figures.{name}': no such figure; registered: {FIGURES.names()}")
            continue
        if params is None:  # null: the figure is not drawn
            continue
        for key, section in (("attack", "attacks"), ("defense", "defenses"), ("arch", "archs")):
            value = params.get(key)
            if value is not None and value not in (config.get(section) or {}):
                out.append(f"config key 'figures.{name}.{key}': {value!r} has no entry under {section!r}")
        dataset = params.get("dataset")
        if dataset is not None and dataset not in ((config.get("data") or {}).get("sources") or {}):
            out.append(f"config key 'figures.{name}.dataset': {dataset!r} has no entry under 'data.sources'")
    return out


def figure_inputs(name: str, config: Mapping) -> dict[str, str]:
    return dict(FIGURES.get(name).figure_inputs(config, figure_params(name, config)))


def render_figure(name: str, config: Mapping, inputs: Mapping[str, str]) -> FigureResult:
    ctx = FigureContext(name, config, figure_params(name, config), dict(inputs))
    return FIGURES.get(name)(ctx)


def save_figure(result: FigureResult, outputs: Mapping[str, str], dpi: int = 130) -> None:
    """Write the figure to each of ``outputs`` ({"png": …, "pdf": …, "json": …}) atomically."""
    for kind, path in outputs.items():
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            if kind == "json":
                tmp.write_text(json.dumps({"caption": result.caption, "numbers": result.numbers}, indent=2) + "\n")
            else:
                result.figure.savefig(tmp, format=kind, dpi=dpi, bbox_inches="tight")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
    plt.close(result.figure)


# -- cells, models and images --------------------------------------------------------------------
def cell_setting(config: Mapping, params: Mapping) -> tuple[str, str]:
    """(dataset, arch) of a figure: its own ``dataset``/``arch`` keys, else the run's first ones."""
    run = config.get("run") or {}
    return params.get("dataset") or run["datasets"][0], params.get("arch") or run["archs"][0]


def cell_file(
    config: Mapping, params: Mapping, bits: int | None = None, defense: str = "none", file="model.safetensors"
):
    dataset, arch = cell_setting(config, params)
    bits = params["bits"] if bits is None else bits
    return f"results/{dataset}/{arch}/{params['attack']}/w{bits}/{defense}/seed{params['seed']}/{file}"


def data_file(config: Mapping, params: Mapping) -> str:
    return f"resources/data/{cell_setting(config, params)[0]}/data.safetensors"


def _describe(params: Mapping) -> str:
    return f"{params['attack']}, {params['bits']}-bit, seed {params['seed']}"


def _load(path: str) -> tuple[nn.Module, dict]:
    from qcbench import io

    model, meta = io.load_model(path, "cpu")
    return model.eval(), meta


def poisoned_test_images(data: str, meta: dict, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The first ``n`` test images whose label is not the target: (benign, triggered, labels, target),
    floats in [0, 1] (the population ASR is measured on)."""
    from qcbench.data import load_prepared
    from qcbench.triggers import create_trigger

    splits = load_prepared(data)
    atk = meta.get("attack") or {}
    if not atk:
        raise ValueError(f"figure needs an attacked model; {meta.get('arch')} model has no attack")
    target = int(atk["target"])
    keep = splits.test.y != target
    x = splits.test.x[keep][:n].float().div(255.0)
    trigger = create_trigger(atk["trigger"], splits.meta["image_size"])
    return x, trigger(x), splits.test.y[keep][:n], target


def _module(model: nn.Module, name: str, key: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"config key {key!r}: module {name!r} is not in the model") from None


def output_module(model: nn.Module, name: str) -> nn.Module:
    """The module whose output is module ``name``'s: ``name`` itself, or, in a torch.fx
    GraphModule (a quantized model under MQBench placement), where a container such as a stage is
    inlined and never called, the last module called inside it."""
    if isinstance(model, torch.fx.GraphModule):
        called = [n.target for n in model.graph.nodes if n.op == "call_module"]
        inside = [t for t in called if t.startswith(f"{name}.")]
        if name not in called and inside:
            return model.get_submodule(inside[-1])
    return model.get_submodule(name)


def _batched(fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def module_input(model: nn.Module, layer: str, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The input of module ``layer`` for images ``x`` (the pre-activation when ``layer`` is a ReLU)."""
    store: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_pre_hook(lambda _m, a: store.append(a[0].detach()))
    try:
        _batched(model, x, batch_size)
    finally:
        handle.remove()
    return torch.cat(store)


def peak(acts: torch.Tensor) -> torch.Tensor:
    """Per image and channel, the maximum over spatial positions ((N, C, H, W) -> (N, C))."""
    return acts.flatten(2).amax(2) if acts.ndim > 2 else acts


@torch.no_grad()
def backdoor_loss(model: nn.Module, x_poisoned: torch.Tensor, target: int, batch_size: int = 256) -> float:
    """Cross-entropy of triggered images toward the target label (the backdoor loss)."""
    total = sum(_loss_sum(model, x_poisoned[i : i + batch_size], target) for i in range(0, len(x_poisoned), batch_size))
    return total / len(x_poisoned)


def _loss_sum(model: nn.Module, x: torch.Tensor, target: int) -> float:
    """The backdoor loss of one batch, summed over its images."""
    return F.cross_entropy(model(x), torch.full((len(x),), target), reduction="sum").item()


def _replayed(out):
    return out.clone() if isinstance(out, torch.Tensor) else out  # in-place ops downstream


@contextlib.contextmanager
def replay_upstream(model: nn.Module, layer: str, x: torch.Tensor):
    """While active, ``model(x)`` reuses the outputs of every submodule whose calls all end before
    ``layer`` starts (the network upstream of it), recorded once on ``x``: a forward pass that only
    changes ``layer``'s input then costs only the part of the network from ``layer`` on. Each
    replayed module returns its recorded outputs in call order, so ``x`` must be the same input."""
    target = model.get_submodule(layer)
    modules = {name: m for name, m in model.named_modules() if name and m is not target}
    started, outputs, late = [False], {}, set()

    def record(name):
        def hook(_m, _args, out):
            if started[0]:
                late.add(name)
            else:
                outputs.setdefault(name, []).append(out)

        return hook

    handles = [target.register_forward_pre_hook(lambda _m, _a: started.__setitem__(0, True))]
    handles += [m.register_forward_hook(record(name)) for name, m in modules.items()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    early = [n for n in outputs if n not in late]
    outermost = [n for n in early if not any(n.startswith(f"{o}.") for o in early)]
    previous = {}
    for name in outermost:
        m, calls, count = modules[name], outputs[name], itertools.count()
        previous[name] = m.__dict__.get("forward")
        m.forward = lambda *_a, _calls=calls, _count=count, **_k: _replayed(_calls[next(_count) % len(_calls)])
    try:
        yield
    finally:
        for name, fwd in previous.items():
            del modules[name].forward
            if fwd is not None:
                modules[name].forward = fwd


@torch.no_grad()
def neuron_importance(
    model: nn.Module, layer: str, x_poisoned: torch.Tensor, target: int, batch_size: int = 256
) -> torch.Tensor:
    """Backdoor importance τ of every channel at the input of ``layer`` (LAC, Definition 3.1): the
    rise of the backdoor loss when that neuron is pruned, i.e. its pre-activation set to zero. The
    network upstream of ``layer`` runs once per batch (:func:`replay_upstream`), not per channel."""
    module = model.get_submodule(layer)
    channels = module_input(model, layer, x_poisoned[:1]).shape[1]
    mask = torch.ones(channels)

    def prune(_m, args):
        return (args[0] * mask.view(1, -1, *([1] * (args[0].ndim - 2))),)

    base, pruned = 0.0, torch.zeros(channels, dtype=torch.float64)
    for i in range(0, len(x_poisoned), batch_size):
        x = x_poisoned[i : i + batch_size]
        with replay_upstream(model, layer, x):
            base += _loss_sum(model, x, target)
            handle = module.register_forward_pre_hook(prune)
            try:
                for k in range(channels):
                    mask.fill_(1.0)
                    mask[k] = 0.0
                    pruned[k] += _loss_sum(model, x, target)
            finally:
                handle.remove()
    return ((pruned - base) / len(x_poisoned)).float()


def _hist(ax, values, color, label, bins):
    ax.hist(values, bins=bins, color=color, alpha=0.45, label=label, density=True)


# -- Figure 1 ------------------------------------------------------------------------------------
def _fig1_inputs(config, params):
    return {
        "fp": cell_file(config, params, bits=32),
        "quantized": cell_file(config, params),
        "data": data_file(config, params),
    }


@register_figure("fig1", inputs=_fig1_inputs)
def fig1(ctx: FigureContext) -> FigureResult:
    """Pre-activations of the most and least backdoor-important neurons of one layer (τ measured in
    the quantized model), FP vs quantized, benign vs poisoned test images."""
    p = ctx.params
    fp, meta = _load(ctx.inputs["fp"])
    q, qmeta = _load(ctx.inputs["quantized"])
    layer = p["layer"]
    _module(q, layer, f"figures.{ctx.name}.layer")
    xb, xp, _, target = poisoned_test_images(ctx.inputs["data"], meta, int(p.get("images", 256)))
    tau = neuron_importance(q, layer, xp, target)
    order = torch.argsort(tau, descending=True)
    top, bottom = int(order[0]), int(order[-1])
    acts = {(m, k): peak(module_input(model, layer, x)) for m, model in (("FP", fp), ("quantized", q))
            for k, x in (("benign", xb), ("poisoned", xp))}  # fmt: skip

    fig = plt.figure(figsize=(11, 5.2))
    grid = fig.add_gridspec(2, 3, width_ratios=[1.1, 1, 1], wspace=0.3, hspace=0.45)
    ax = fig.add_subplot(grid[:, 0])
    ranked = tau[order].numpy()
    colors = ["0.6"] * len(ranked)
    colors[0], colors[-1] = "tab:purple", "tab:olive"
    ax.bar(np.arange(len(ranked)), ranked, color=colors, width=1.0)
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel=f"channel of {layer} (ranked by τ)", ylabel="τ: rise of backdoor loss when pruned")
    ax.set_title(f"backdoor importance, {qmeta['bits']}-bit model", fontsize=10)
    numbers = {"layer": layer, "tau": [round(float(t), 5) for t in tau], "most": top, "least": bottom}
    bits = qmeta["bits"]
    for r, (k, what) in enumerate(((top, "most"), (bottom, "least"))):
        lo = min(float(acts[key][:, k].min()) for key in acts)
        hi = max(float(acts[key][:, k].max()) for key in acts)
        bins = np.linspace(lo, hi, 40)
        for c, m in enumerate(("FP", "quantized")):
            a = fig.add_subplot(grid[r, c + 1])
            for kind, color in (("benign", BENIGN), ("poisoned", POISONED)):
                v = acts[(m, kind)][:, k].numpy()
                _hist(a, v, color, f"{kind} (mean {v.mean():.2f})", bins)
                numbers[f"{what}_{m}_{kind}_mean_peak"] = round(float(v.mean()), 4)
            label = "FP32" if m == "FP" else f"{bits}-bit"
            a.set_title(f"{what} important (ch {k}, τ={float(tau[k]):+.3f}), {label}", fontsize=9)
            a.set_xlabel("peak pre-activation per image", fontsize=8)
            a.legend(fontsize=7)
            a.tick_params(labelsize=7)
    caption = (
        f"Figure 1 ({_describe(p)}): backdoor importance τ (LAC Definition 3.1: rise of the "
        f"cross-entropy of {len(xp)} triggered test images toward target {target} when one channel's "
        f"pre-activation at {layer} is zeroed, measured in the {bits}-bit model) and the per-image peak "
        f"pre-activation of the most (ch {top}) and least (ch {bottom}) important channels, FP32 vs "
        f"{bits}-bit, benign vs poisoned images."
    )
    return FigureResult(fig, caption, numbers)


# -- Figure 2 ------------------------------------------------------------------------------------
def _fig2_inputs(config, params):
    return {"curve": cell_file(config, params, defense="lac", file="lac_curve.parquet")}


@register_figure("fig2", inputs=_fig2_inputs)
def fig2(ctx: FigureContext) -> FigureResult:
    """LAC run on benign, mixed (90:10) and poisoned defender data: the quantized model's ASR and
    BA against cumulative LAC iterations (``lac_curve.parquet``, contract.md)."""
    import pandas as pd

    df = pd.read_parquet(ctx.inputs["curve"])
    missing = {"data", "iteration", "ba", "asr"} - set(df.columns)
    if missing:
        raise ValueError(f"{ctx.inputs['curve']}: lac_curve lacks columns {sorted(missing)}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"benign": BENIGN, "mixed": "tab:orange", "poisoned": POISONED}
    numbers = {}
    order = [d for d in ("benign", "mixed", "poisoned") if d in set(df.data)]
    order += sorted(set(df.data) - set(order))
    for d in order:
        sub = df[df.data == d].sort_values("iteration")
        for ax, col in zip(axes, ("asr", "ba"), strict=True):
            ax.plot(sub.iteration, sub[col], marker=".", color=colors.get(d), label=d)
        numbers[d] = {"final_asr": float(sub.asr.iloc[-1]), "final_ba": float(sub.ba.iloc[-1])}
    if "unit" in df.columns:  # unit boundaries of the first curve, as faint lines
        first = df[df.data == order[0]].sort_values("iteration")
        starts = first.iteration[first.unit != first.unit.shift()].iloc[1:]
        for ax in axes:
            for it in starts:
                ax.axvline(it, color="0.85", lw=0.6, zorder=0)
    for ax, label in zip(axes, ("ASR (%)", "BA (%)"), strict=True):
        ax.set(xlabel="LAC iterations (cumulative over units)", ylabel=label, ylim=(-2, 102))
        ax.legend(title="defender data", fontsize=8)
    p = ctx.params
    caption = (
        f"Figure 2 ({_describe(p)}): LAC run on benign, mixed (90:10 benign:poisoned) or poisoned "
        "defender data; ASR and BA of the whole quantized model on the test set against cumulative "
        "LAC iterations (grey lines: a new layer unit starts)."
    )
    return FigureResult(fig, caption, numbers)


# -- Figure 3 ------------------------------------------------------------------------------------
def _fig3_inputs(config, params):
    return {"quantized": cell_file(config, params), "data": data_file(config, params)}


@register_figure("fig3", inputs=_fig3_inputs)
def fig3(ctx: FigureContext) -> FigureResult:
    """One layer unit's BatchNorm input in the quantized model for benign, poisoned and
    PDA-adjusted benign inputs (PDA with the LAC defense's own settings), against the FP BN
    running statistics PDA aims at."""
    from qcbench.defenses.lac import bn_stat_distance, pda
    from qcbench.defenses.units import extract_units, unit_inputs

    p = ctx.params
    q, meta = _load(ctx.inputs["quantized"])
    units = {u.first: u for u in extract_units(q)}
    unit = units.get(p["unit"])
    if unit is None or not unit.bns:
        with_bn = [n for n, u in units.items() if u.bns]
        raise ValueError(f"config key 'figures.{ctx.name}.unit': {p['unit']!r} is not a unit with BatchNorm; {with_bn}")
    lac = dict((ctx.config.get("defenses") or {}).get(p.get("defense", "lac")) or {})
    iters, gamma, alpha = lac.get("pda_iterations", 500), lac.get("gamma", 1e-3), lac.get("pda_alpha", 1e-3)
    bs = int(lac.get("batch_size", 32))
    xb, xp, _, _ = poisoned_test_images(ctx.inputs["data"], meta, int(p.get("images", 256)))
    batches = {k: list(x.split(bs)) for k, x in (("benign", xb), ("poisoned", xp))}
    inputs = {k: unit_inputs(q, unit, b) for k, b in batches.items()}  # as LAC's PDA gets them
    inputs["PDA-adjusted benign"] = [pda(q, unit, x, iters, gamma, alpha) for x in inputs["benign"]]
    bn_name = unit.bns[0]
    bn = q.get_submodule(bn_name)
    feats, dist = {}, {}
    for k, xs in inputs.items():
        feats[k] = torch.cat([_bn_input(q, unit, bn_name, x) for x in xs])
        with torch.enable_grad():
            dist[k] = float(np.mean([bn_stat_distance(q, unit, x).item() for x in xs]))
    colors = {"benign": BENIGN, "poisoned": POISONED, "PDA-adjusted benign": PDA_C}
    mu = {k: f.mean(dim=(2, 3)) for k, f in feats.items()}  # (N, C) per-image channel means
    shift = (mu["poisoned"].mean(0) - mu["benign"].mean(0)).abs()
    ch = int(shift.argmax())

    pda_shift = (mu["PDA-adjusted benign"].mean(0) - mu["benign"].mean(0)).numpy()
    bd_shift = (mu["poisoned"].mean(0) - mu["benign"].mean(0)).numpy()
    corr = float(np.corrcoef(bd_shift, pda_shift)[0, 1]) if pda_shift.std() > 0 else float("nan")

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.6))
    axes = axes.ravel()
    sample = torch.Generator().manual_seed(0)
    allv = torch.cat([f.flatten() for f in feats.values()])
    bins = np.linspace(float(allv.quantile(0.001)), float(allv.quantile(0.999)), 60)
    for k, f in feats.items():
        v = f.flatten()
        v = v[torch.randperm(len(v), generator=sample)[:200_000]]
        axes[0].hist(v.numpy(), bins=bins, histtype="step", lw=1.4, color=colors[k], label=k, density=True)
    axes[0].set_yscale("log")
    axes[0].set(xlabel=f"input of {bn_name} (all channels and positions)", ylabel="density")
    axes[0].set_title("(a) the layer's activation distribution", fontsize=10)
    vals = torch.cat([m[:, ch] for m in mu.values()])
    cbins = np.linspace(float(vals.min()), float(vals.max()), 30)
    for k, m in mu.items():
        axes[1].hist(m[:, ch].numpy(), bins=cbins, histtype="step", lw=1.4, color=colors[k], label=k, density=True)
    axes[1].axvline(float(bn.running_mean[ch]), color="k", ls="--", lw=1, label="FP BN running mean")
    axes[1].set(xlabel=f"channel {ch}: per-image spatial mean", ylabel="density")
    axes[1].set_title(f"(b) channel {ch}, the largest benign→poisoned shift", fontsize=10)
    axes[2].scatter(bd_shift, pda_shift, s=12, color=PDA_C)
    axes[2].axhline(0, color="0.7", lw=0.6)
    axes[2].axvline(0, color="0.7", lw=0.6)
    axes[2].set(xlabel="poisoned − benign (channel mean)", ylabel="PDA-adjusted − benign (channel mean)")
    axes[2].set_title(f"(c) per-channel shift, correlation {corr:.2f}", fontsize=10)
    names = list(dist)
    bars = axes[3].bar(range(len(names)), [dist[k] for k in names], color=[colors[k] for k in names])
    axes[3].bar_label(bars, fmt="%.3f", fontsize=8)
    axes[3].set_xticks(range(len(names)), names, fontsize=8)
    axes[3].set(ylabel="D to the FP BN statistics (per image)")
    axes[3].set_title("(d) PDA's objective D (lower = closer to FP BN)", fontsize=10)
    for a in axes[:2]:
        a.legend(fontsize=7)
    fig.tight_layout()
    caption = (
        f"Figure 3 ({_describe(p)}): input of {bn_name} (unit {unit.modules}) in the {meta['bits']}-bit "
        f"model for {len(xb)} benign test images, the same images triggered, and the benign inputs after "
        f"PDA (the LAC defense's settings: {iters} iterations, γ={gamma:g}, step {alpha:g}); D is PDA's "
        f"distance to the FP BatchNorm statistics: benign {dist['benign']:.3f}, poisoned "
        f"{dist['poisoned']:.3f}, PDA-adjusted {dist['PDA-adjusted benign']:.3f}; (c) correlates PDA's "
        f"per-channel shift with the trigger's ({corr:.2f})."
    )
    numbers = {"unit": unit.modules, "channel": ch, "D": dist, "shift_correlation": corr}
    numbers["pda"] = {"iterations": iters, "gamma": gamma, "alpha": alpha}
    return FigureResult(fig, caption, numbers)


@torch.no_grad()
def _bn_input(model: nn.Module, unit, bn_name: str, x: torch.Tensor) -> torch.Tensor:
    store: list[torch.Tensor] = []
    handle = model.get_submodule(bn_name).register_forward_pre_hook(lambda _m, a: store.append(a[0].detach()))
    try:
        unit.forward(model, x)
    finally:
        handle.remove()
    return store[0]


# -- Figure 4 ------------------------------------------------------------------------------------
def _fig4_inputs(config, params):
    return {
        "quantized": cell_file(config, params),
        "defended": cell_file(config, params, defense=params.get("defense", "lac")),
        "data": data_file(config, params),
    }


def grad_cam(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM maps (N, H, W) in [0, 1] toward each image's predicted class, and the predictions.
    Quantized models are differentiable through their straight-through fake quantizers."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with torch.no_grad():
        pred = model(x).argmax(1)
    with GradCAM(model=model, target_layers=[output_module(model, layer)]) as cam:
        maps = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(int(c)) for c in pred])
    return maps, pred


@register_figure("fig4", inputs=_fig4_inputs)
def fig4(ctx: FigureContext) -> FigureResult:
    """Grad-CAM of a few poisoned test images toward the predicted class, in the quantized model
    without and with the defense, and t-SNE of the penultimate features (benign vs poisoned)."""
    from sklearn.manifold import TSNE

    p = ctx.params
    q, meta = _load(ctx.inputs["quantized"])
    d, dmeta = _load(ctx.inputs["defended"])
    n_cam, n_tsne = int(p.get("cam_images", 4)), int(p.get("tsne_images", 300))
    xb, xp, y, target = poisoned_test_images(ctx.inputs["data"], meta, max(n_cam, n_tsne))
    cam_layer, feat_layer = p.get("cam_layer", "layers"), p.get("feature_layer", "fc")
    for model in (q, d):
        _module(model, cam_layer, f"figures.{ctx.name}.cam_layer")
        _module(model, feat_layer, f"figures.{ctx.name}.feature_layer")
    from qcbench.tables import defense_label

    models = (("no defense", q), (defense_label(ctx.config, p.get("defense", "lac"), ours=False), d))

    fig = plt.figure(figsize=(2.0 * n_cam + 9, 6.2))
    grid = fig.add_gridspec(3, n_cam + 2, width_ratios=[1] * n_cam + [2.6, 2.6], wspace=0.25, hspace=0.35)
    numbers = {}
    img = xp[:n_cam]
    for c in range(n_cam):
        a = fig.add_subplot(grid[0, c])
        a.imshow(img[c].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        a.set_title(f"poisoned, label {int(y[c])}", fontsize=8)
        a.axis("off")
    for r, (label, model) in enumerate(models):
        maps, pred = grad_cam(model, cam_layer, img)
        numbers[f"cam_pred_{label}"] = pred.tolist()
        for c in range(n_cam):
            a = fig.add_subplot(grid[r + 1, c])
            a.imshow(img[c].permute(1, 2, 0).mean(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            a.imshow(maps[c], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            a.set_title(f"{label}: pred {int(pred[c])}", fontsize=8, color="red" if int(pred[c]) == target else "k")
            a.axis("off")
    nb = min(n_tsne, len(xb))
    npois = nb // 2
    for i, (label, model) in enumerate(models):
        feats = torch.cat([module_input(model, feat_layer, xb[:nb]), module_input(model, feat_layer, xp[:npois])])
        with torch.no_grad():
            pred_p = _batched(model, xp[:npois], 256).argmax(1)
        emb = TSNE(2, init="pca", random_state=0, perplexity=min(30, (nb + npois - 1) // 3)).fit_transform(
            feats.flatten(1).numpy()
        )
        a = fig.add_subplot(grid[:, n_cam + i])
        a.scatter(emb[:nb, 0], emb[:nb, 1], c=y[:nb].numpy(), cmap="tab10", vmin=0, vmax=9, s=7, alpha=0.35)
        hit = (pred_p == target).numpy()
        a.scatter(emb[nb:][hit, 0], emb[nb:][hit, 1], c="red", marker="x", s=14, label="poisoned → target")
        a.scatter(emb[nb:][~hit, 0], emb[nb:][~hit, 1], c="k", marker="x", s=14, label="poisoned, other class")
        a.set_title(f"t-SNE of {feat_layer} input, {label}", fontsize=9)
        a.set_xticks([])
        a.set_yticks([])
        a.legend(fontsize=7, loc="lower right")
        numbers[f"tsne_poisoned_to_target_{label}"] = float(hit.mean())
    caption = (
        f"Figure 4 ({_describe(p)}): Grad-CAM at `{cam_layer}` toward the predicted class for {n_cam} "
        f"triggered test images (target {target}; red titles: predicted as the target) in the "
        f"{meta['bits']}-bit model without defense and after {models[1][0]}; right: t-SNE of the input of "
        f"`{feat_layer}` for {nb} benign test images (dots, coloured by true class) and {npois} triggered "
        "ones (crosses; red: classified as the target), without defense and after the defense."
    )
    return FigureResult(fig, caption, numbers)
