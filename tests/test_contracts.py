"""Contracts every registered entry meets, parametrized over each registry's ``names()`` at
collection time (as timm's model tests run over ``list_models()``): registering a method is enough
to put it under these tests. Each entry is built from its defaults, run on a tiny model or input
with its budgets cut to the minimum (:func:`tiny_budget`), and checked against its family's
invariants."""

from __future__ import annotations

import copy
import inspect
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pytest
import torch
from qcbench.attacks import ATTACKS, create_attack, declared_scheme
from qcbench.attacks.base import REQUIRED_KEYS, cell_bits
from qcbench.backends import BACKENDS, QuantizedModel, available_backends, quantize_real
from qcbench.data import DATASETS, DataSourceError, load_prepared, prepare_dataset
from qcbench.defenses import DEFENSES, FPDefense, create_defense, is_fp_defense
from qcbench.defenses.base import defaults_of
from qcbench.detection import DETECTORS, STATUSES, DetectionInputs, Verdict, at_precision, create_detector
from qcbench.detection.base import NoGradientError
from qcbench.fabricate import FABRICATORS, fabricate
from qcbench.figures import FIGURES, FigureResult, figure_inputs, render_figure
from qcbench.models import MODELS, create_model
from qcbench.package_data import PAPER_REFERENCE
from qcbench.quant import (
    QUANT_MODULES,
    SCHEMES,
    QuantScheme,
    calibrate,
    create_scheme,
    quantize_calibrated,
    quantize_model,
)
from qcbench.tables import TABLES, PaperReference, TableContext, render, table_inputs
from qcbench.triggers import TRIGGERS, create_trigger
from torch import nn

from .conftest import ROOT, write_idx
from .fabricate import CONFIG, lac_curve, make_cell, metrics_rows

SRC = ROOT / "workflow" / "src"
#: every registry of the library, by the module attribute that holds it
REGISTRIES = {
    "qcbench.attacks.base.ATTACKS": ATTACKS,
    "qcbench.defenses.base.DEFENSES": DEFENSES,
    "qcbench.triggers.base.TRIGGERS": TRIGGERS,
    "qcbench.models._registry.MODELS": MODELS,
    "qcbench.quant.SCHEMES": SCHEMES,
    "qcbench.backends.BACKENDS": BACKENDS,
    "qcbench.tables._base.TABLES": TABLES,
    "qcbench.data.DATASETS": DATASETS,
    "qcbench.figures.FIGURES": FIGURES,
    "qcbench.detection.base.DETECTORS": DETECTORS,
    "qcbench.fabricate.FABRICATORS": FABRICATORS,
}
#: a name usable as a path component and a config key
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
ALL_ENTRIES = [pytest.param(reg, name, id=f"{reg.kind}-{name}") for reg in REGISTRIES.values() for name in reg.names()]
TRIGGER = {"name": "patch"}  # the minimal trigger an attack entry must state

# -- budgets ------------------------------------------------------------------------------------
#: how :func:`tiny_budget` cuts a parameter, by its name: loop counts to one pass, sample counts
#: and batch sizes to a handful of images
LOOPS = re.compile(r"(^|_)(epochs|iterations|iter|rounds|steps_per_epoch)$")
SAMPLES = re.compile(r"^samples_per_epoch$|_images$|^n_")
BATCHES = re.compile(r"(^|_)batch_size$")
TINY = {"loops": 1, "samples": 64, "batch": 16, "calib_batches": 2}


def tiny_budget(params: Mapping) -> dict:
    """``params`` (a method's defaults) with every budget cut to the minimum, nested stages
    included: ``*epochs``, ``*iterations``, ``*iter``, ``*rounds``, ``steps_per_epoch`` to 1,
    ``samples_per_epoch``, ``*_images`` and ``n_*`` counts to 64 images, ``*batch_size`` to 16,
    ``calib_batches`` to 2. Other settings keep their defaults."""
    out = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            value = tiny_budget(value)
        elif isinstance(value, bool) or not (value is None or isinstance(value, int)):
            pass
        elif LOOPS.search(key) and value is not None:
            value = TINY["loops"]
        elif SAMPLES.search(key):
            value = TINY["samples"]
        elif BATCHES.search(key) and value is not None:
            value = TINY["batch"]
        elif key == "calib_batches":
            value = TINY["calib_batches"]
        out[key] = value
    return out


def test_tiny_budget_cuts_every_budget_and_keeps_the_rest():
    cut = tiny_budget({"epochs": 50, "nb_iter": 2000, "ft_epochs": 9, "pda_iterations": 500, "n_rounds": 5,
                       "steps_per_epoch": 10, "samples_per_epoch": None, "inspect_images": 5000, "n_overlays": 100,
                       "batch_size": 256, "pda_batch_size": 256, "calib_batches": 32, "lr": 0.1,
                       "bits": [8, 4], "adaptive": True,
                       "clean_images": None, "stage1": {"epochs": 100, "poison_fraction": 0.015625}})  # fmt: skip
    assert cut == {"epochs": 1, "nb_iter": 1, "ft_epochs": 1, "pda_iterations": 1, "n_rounds": 1,
                   "steps_per_epoch": 1, "samples_per_epoch": 64, "inspect_images": 64, "n_overlays": 64,
                   "batch_size": 16, "pda_batch_size": 16, "calib_batches": 2, "lr": 0.1, "bits": [8, 4],
                   "adaptive": True,
                   "clean_images": 64, "stage1": {"epochs": 1, "poison_fraction": 0.015625}}  # fmt: skip


# -- shared tiny inputs -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(trained_tiny):
    return trained_tiny


@pytest.fixture(scope="module")
def shipped_configs() -> dict[str, dict]:
    """The shipped configs as the workflow loads them (methods resolved): the local default and
    the paper config."""
    from qcbench.config import load_config

    return {"local": load_config(), "paper": load_config(ROOT / "config" / "config.yaml")}


def images(splits, n: int = 32) -> torch.Tensor:
    return splits.test.x[:n].float() / 255


def _copied(v):
    return v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)


def state(model: nn.Module) -> dict:
    """A copy of ``model``'s state (dynamically quantized layers hold a dtype and a weight/bias pair)."""
    return {k: tuple(map(_copied, v)) if isinstance(v, tuple) else _copied(v) for k, v in model.state_dict().items()}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.is_quantized or b.is_quantized:
            return a.is_quantized and b.is_quantized and torch.equal(a.dequantize(), b.dequantize())
        return torch.equal(a, b)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    return a == b


def same_state(a: Mapping, b: Mapping) -> bool:
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


def finite_logits(model: nn.Module, x: torch.Tensor, classes: int) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    assert out.shape == (len(x), classes) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    return out


def reloaded(model: nn.Module, meta: Mapping, path: Path, scheme: QuantScheme | None = None) -> nn.Module:
    """``model`` (quantized with ``scheme``, if any) written to and read back from the pipeline's
    model files (safetensors + JSON)."""
    from qcbench import io

    io.save_model(model, path, dict(meta) | {"scheme": scheme.to_dict() if scheme else None})
    return io.load_model(path)[0]


def tiny_meta(splits) -> dict:
    """The model-file metadata :func:`qcbench.io.build_model` reads, for the tiny ``resnet_tiny``."""
    m = splits.meta
    return {"arch": "resnet_tiny", "arch_kwargs": {"width": 4}} | {
        k: m[k] for k in ("num_classes", "in_channels", "image_size", "mean", "std")
    }


def quant_layers(model: nn.Module) -> int:
    return sum(isinstance(m, QUANT_MODULES) for m in model.modules())


# -- every family -------------------------------------------------------------------------------
def test_every_registry_of_the_library_is_under_contract():
    """A new ``Registry`` in the sources is listed here (else its entries would go untested)."""
    found = set()
    for path in sorted((SRC / "qcbench").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        found |= {f"{module}.{name}" for name in re.findall(r"^(\w+) = Registry\(", path.read_text(), re.M)}
    assert found == set(REGISTRIES)


@pytest.mark.parametrize("registry", REGISTRIES.values(), ids=[r.kind for r in REGISTRIES.values()])
def test_registry_is_not_empty_and_unknown_names_list_the_registered_ones(registry):
    names = registry.names()
    assert names and names == sorted(set(names))
    with pytest.raises(KeyError) as err:
        registry.get("no_such_entry")
    message = str(err.value)
    assert "'no_such_entry'" in message and all(n in message for n in names)


@pytest.mark.parametrize("registry,name", ALL_ENTRIES)
def test_names_are_lowercase_identifiers_usable_in_paths(registry, name):
    assert NAME.match(name), f"{registry.kind} {name!r} is not a lowercase identifier"
    assert name in registry and callable(registry.get(name))


FACTORIES = {  # each family's public factory, called with an unregistered name
    "attack": lambda n: create_attack(n, {"target": 0, "trigger": TRIGGER}, 28),
    "defense": lambda n: create_defense(n, {}),
    "trigger": lambda n: create_trigger({"name": n}, 28),
    "arch": lambda n: create_model(n, 10, 3, [0.5] * 3, [0.25] * 3),
    "quantization scheme": lambda n: create_scheme(n, 8),
    "backend": lambda n: quantize_real(n, nn.Linear(1, 1), [torch.zeros(1, 1)]),
    "table": lambda n: render(n, TableContext(pd.DataFrame())),
    "dataset": lambda n: prepare_dataset(n, {"path": "."}, "unused.safetensors", 0.05, 0),
    "figure": lambda n: figure_inputs(n, {"figures": {n: {}}}),
    "detector": lambda n: create_detector(n, {}),
    "fabricator": lambda n: fabricate(n, "unused"),
}


@pytest.mark.parametrize("registry", REGISTRIES.values(), ids=[r.kind for r in REGISTRIES.values()])
def test_the_public_factory_refuses_an_unknown_name_listing_the_known(registry):
    with pytest.raises(KeyError) as err:
        FACTORIES[registry.kind]("no_such_entry")
    assert "'no_such_entry'" in str(err.value) and all(n in str(err.value) for n in registry.names())


# -- attacks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_builds_from_its_defaults_and_declares_a_scheme(name, shipped_configs):
    cls = ATTACKS.get(name)
    attack = create_attack(name, {"target": 1, "trigger": TRIGGER}, 28)
    defaults = cls.defaults_of()
    assert attack.name == name and attack.target == 1 and attack.params == cls.resolve({}) == defaults
    assert REQUIRED_KEYS <= cls.accepted_keys() and set(defaults) <= cls.accepted_keys()
    assert attack.param_errors(attack.params) == {}
    attack.check_params()
    # its trigger, as stated
    x = torch.rand(2, 1, 28, 28)
    assert attack.trigger_spec == TRIGGER and attack.trigger(x).shape == x.shape
    assert attack.describe() == {"name": name, "target": 1, "trigger": TRIGGER, "scheme": cls.scheme}
    # its scheme family: its own, else the default one; a registered scheme at every bit width it gets
    assert defaults["scheme"] == cls.scheme and (cls.scheme is None or cls.scheme in SCHEMES)
    default = shipped_configs["paper"]["quant"]["default_scheme"]
    scheme = declared_scheme(attack.params, default)
    assert scheme == (cls.scheme or default)
    bits = cell_bits(attack.params, [8, 4])
    assert bits and all(create_scheme(scheme, b).weight_bits == b for b in bits)
    # where it starts
    assert attack.init in {"clean", "scratch"}


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_run_on_the_smallest_budget_returns_the_same_architecture(name, trained, tiny_splits, tmp_path):
    spec = {"target": 1, "trigger": TRIGGER} | tiny_budget(ATTACKS.get(name).defaults_of())
    before = state(trained)
    runs = []
    for _ in range(2):  # seeded as the attack stage seeds it: the same model twice
        torch.manual_seed(0)
        attack = create_attack(name, spec, tiny_splits.meta["image_size"])
        runs.append(attack.run(copy.deepcopy(trained), tiny_splits, seed=0, device="cpu"))
    out = runs[0]
    assert type(out) is type(trained) and not out.training and quant_layers(out) == 0
    after = state(out)
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    assert not same_state(after, before)  # it trained
    assert same_state(state(runs[1]), after), f"{name} is not reproducible under a fixed seed"
    x = images(tiny_splits)
    logits = finite_logits(out, x, tiny_splits.meta["num_classes"])
    with torch.no_grad():
        assert torch.equal(reloaded(out, tiny_meta(tiny_splits), tmp_path / "m.safetensors")(x), logits)


# -- defenses -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_has_a_label_and_builds_from_its_defaults(name):
    cls = DEFENSES.get(name)
    assert isinstance(getattr(cls, "label", None), str) and cls.label.strip()
    sig = inspect.signature(cls)
    explicit = {p.name: p for p in sig.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    assert all(p.default is not p.empty for p in explicit.values()), f"{name}: a constructor argument has no default"
    defaults = defaults_of(name)
    for key, p in explicit.items():  # defaults_of is the constructor's (tuples as YAML gives them)
        assert defaults[key] == (list(p.default) if isinstance(p.default, tuple) else p.default), key
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        assert set(defaults) == set(explicit)
    sig.bind(**defaults)
    json.dumps(defaults)  # a config entry can state every one of them
    d, d_all = create_defense(name, {}), create_defense(name, defaults)
    assert d.name == name and d.params == d_all.params
    assert is_fp_defense(name) == isinstance(d, FPDefense)


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_documents_every_key(name):
    """Each config key of a defense is named (``key`` in double backticks) in the docstrings of its class or of a
    module along its class hierarchy: a method's keys are documented where they are declared."""
    import sys

    docs = "".join(
        (inspect.getdoc(k) or "") + (sys.modules[k.__module__].__doc__ or "")
        for k in DEFENSES.get(name).__mro__
        if k.__module__.startswith("qcbench.")
    )
    assert [k for k in defaults_of(name) if f"``{k}``" not in docs] == []


#: the cells' quantizers a defense is run on: a calibrated per-channel one, and CompArtifact's,
#: which folds BatchNorm into the convolutions (the quantized model is a torch.fx GraphModule)
DEFENDED_SCHEMES = [("pq", 4), ("ca", 8)]


@pytest.fixture(scope="module")
def qmodels(trained, tiny_splits) -> dict:
    """The tiny model quantized and calibrated in each of :data:`DEFENDED_SCHEMES`."""
    return {
        (family, bits): quantize_calibrated(trained, create_scheme(family, bits), tiny_splits.defender, images=64)
        for family, bits in DEFENDED_SCHEMES
    }


@pytest.mark.parametrize("family,bits", DEFENDED_SCHEMES)
@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_run_returns_a_quantized_model_in_the_input_scheme(
    name, family, bits, trained, qmodels, tiny_splits, tmp_path, request
):
    qmodel = qmodels[family, bits]
    fp_before, q_before = state(trained), state(qmodel)
    calib = {"calib_images": 64, "calib_batch_size": 32} if is_fp_defense(name) else {}
    runs = []
    for _ in range(2):  # seeded as the defend stage seeds it: the same model twice
        torch.manual_seed(0)
        defense = create_defense(name, tiny_budget(defaults_of(name)))
        runs.append(defense.run(trained, qmodel, tiny_splits, seed=0, device="cpu", **calib))
        assert same_state(state(trained), fp_before) and same_state(state(qmodel), q_before)  # inputs untouched
    out = runs[0]
    assert quant_layers(out) == quant_layers(qmodel) > 0 and not out.training
    layers = [m for m in out.modules() if isinstance(m, QUANT_MODULES)]
    assert all(bool(m.wq.calibrated) and (m.aq is None or bool(m.aq.calibrated)) for m in layers)
    assert same_state(state(runs[1]), state(out)), f"{name} is not reproducible under a fixed seed"
    x = images(tiny_splits)
    logits = finite_logits(out, x, tiny_splits.meta["num_classes"])
    with torch.no_grad():
        assert torch.equal(
            reloaded(out, tiny_meta(tiny_splits), tmp_path / "m.safetensors", qmodel.qcbench_scheme)(x), logits
        )
    assert out.qcbench_scheme == qmodel.qcbench_scheme


# -- triggers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("channels,dtype", [(1, torch.float32), (3, torch.float64)])
@pytest.mark.parametrize("name", TRIGGERS.names())
def test_trigger_keeps_shape_dtype_range_and_is_deterministic(name, channels, dtype):
    x = torch.rand(6, channels, 32, 32, generator=torch.Generator().manual_seed(0), dtype=dtype)
    x[0], x[1] = 0.0, 1.0  # the range's ends
    x_before = x.clone()
    trigger = create_trigger({"name": name}, 32)
    out = trigger(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, x_before)  # a new tensor, the input untouched
    assert not torch.equal(out, x)  # it stamps something
    assert torch.equal(trigger(x), out) and torch.equal(create_trigger({"name": name}, 32)(x), out)
    # image by image: the evaluation batch size does not change a stamped image
    alone = torch.cat([trigger(x[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(alone, out, rtol=0, atol=1e-5)
    if "seed" in inspect.signature(TRIGGERS.get(name)).parameters:  # the seed is the only randomness
        again = create_trigger({"name": name, "seed": 3}, 32)
        assert torch.equal(again(x), create_trigger({"name": name, "seed": 3}, 32)(x))
        assert not torch.equal(again(x), out)


# -- models -------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])  # Fashion-MNIST's and CIFAR-10's images
@pytest.mark.parametrize("name", MODELS.names())
def test_model_builds_for_a_small_input_and_quantizes(
    name, channels, size, shipped_configs, one_torch_thread, tmp_path
):
    torch.manual_seed(0)
    mean, std = [0.5] * channels, [0.25] * channels
    model = create_model(name, 7, channels, mean, std, image_size=size).eval()
    x = torch.rand(2, channels, size, size)
    fp = finite_logits(model, x, 7)
    torch.fx.symbolic_trace(model)  # layer units and the FX backends trace it
    n = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())
    q = calibrate(quantize_model(model, create_scheme(shipped_configs["paper"]["quant"]["default_scheme"], 8)), [x])
    assert quant_layers(q) == n > 0
    assert torch.equal(model(x), fp)  # quantize_model works on a copy
    out = finite_logits(q, x, 7)
    # both round-trip through the pipeline's model files, built from the metadata alone
    meta = {"arch": name, "num_classes": 7, "in_channels": channels, "image_size": size, "mean": mean, "std": std}
    with torch.no_grad():
        assert torch.equal(reloaded(model, meta, tmp_path / "fp.safetensors")(x), fp)
        assert torch.equal(reloaded(q, meta, tmp_path / "q.safetensors", q.qcbench_scheme)(x), out)


# -- schemes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEMES.names())
def test_scheme_quantizes_the_tiny_model_close_to_fp_at_8_bits(name, trained, tiny_splits, tmp_path):
    x = images(tiny_splits, 64)
    fp = finite_logits(trained, x, 10)
    errors = {}
    for bits in (8, 4):
        scheme = create_scheme(name, bits)
        assert isinstance(scheme, QuantScheme) and scheme.weight_bits == bits and scheme.act_bits == bits
        assert QuantScheme.from_dict(json.loads(json.dumps(scheme.to_dict()))) == scheme
        q = quantize_calibrated(trained, scheme, tiny_splits.defender, images=64, batch_size=32)
        assert q.qcbench_scheme == scheme and quant_layers(q) > 0
        out = finite_logits(q, x, 10)
        with torch.no_grad():  # the pipeline's model files hold the calibrated grid
            assert torch.equal(reloaded(q, tiny_meta(tiny_splits), tmp_path / f"w{bits}.safetensors", scheme)(x), out)
        errors[bits] = ((out - fp).norm() / fp.norm()).item()
        if bits == 8:
            agree = (out.argmax(1) == fp.argmax(1)).float().mean().item()
            assert errors[8] < 0.15 and agree >= 0.9, (errors, agree)
    assert errors[4] > errors[8], errors  # fewer bits, coarser grid


# -- backends -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS.names())
def test_backend_runs_an_8_bit_model_that_agrees_with_the_simulated_one(name, trained, tiny_splits):
    reason = available_backends()[name]
    if reason is not None:
        pytest.skip(reason)
    calib = [x for x, _ in tiny_splits.defender.batches(32, limit=128)]
    q = quantize_real(name, trained, calib)
    assert isinstance(q, QuantizedModel) and q.backend == name and q.quantized_ops()
    x = images(tiny_splits, 200)
    out = finite_logits(q, x, 10)
    sim = quantize_calibrated(trained, create_scheme("fbgemm_like", 8), tiny_splits.defender, images=128)
    with torch.no_grad():
        agree = (out.argmax(1) == sim(x).argmax(1)).float().mean().item()
    assert agree >= 0.9, f"{name} agrees with the simulated 8-bit model on {agree:.0%} of the images"


# -- tables -------------------------------------------------------------------------------------
def detection_rows() -> pd.DataFrame:
    """A collated detection frame (qcbench.detection.run's columns): every detector, two
    precisions, a BadNets and a clean model, two seeds."""
    from qcbench.detection.run import DETECTION_COLUMNS

    rows = [dict(dataset="fashion_mnist", arch="resnet_tiny", attack=attack, seed=seed, detector=det,
                 precision=precision, status=STATUSES[(seed + i) % len(STATUSES)], score=1.0 + i, threshold=2.0,
                 detail="{}", ba=88.0, asr=95.0 if attack == "badnets" else 10.0, wall_s=1.0,
                 config_hash="fabricated", git_commit="0" * 40, versions="{}")
            for i, det in enumerate(DETECTORS.names()) for attack in ("badnets", "clean") for seed in (0, 1)
            for precision in ("fp32", "int8_dynamic")]  # fmt: skip
    return pd.DataFrame(rows).astype(DETECTION_COLUMNS)


#: fabricated collated frames, by the input name tables declare (``register_table(inputs=...)``)
FRAMES = {"detection": detection_rows}


@pytest.fixture(scope="module")
def collated(tmp_path_factory) -> pd.DataFrame:
    """tests/fabricate.py's metrics rows collated as the ``collate`` rule does (DER added)."""
    from qcbench import io, stages

    root = tmp_path_factory.mktemp("collated")
    cells = []
    for i, row in metrics_rows().iterrows():
        io.write_parquet(pd.DataFrame([row]).astype(io.METRIC_COLUMNS), root / f"{i}.parquet")
        cells.append(str(root / f"{i}.parquet"))
    return stages.collate(cells, str(root / "metrics.parquet"))


@pytest.mark.parametrize("name", TABLES.names())
def test_table_renders_from_fabricated_metrics(name, collated, shipped_configs):
    inputs = table_inputs(name)
    for key, path in inputs.items():
        assert key in FRAMES, f"table {name} needs a fabricated {key!r} frame here"
        assert path.startswith("results/") and Path(path).suffix == ".parquet", path
    frames = {k: FRAMES[k]() for k in inputs}
    paper = PaperReference.load(PAPER_REFERENCE)
    assert not paper.frame.empty
    empty = collated.iloc[:0]  # nothing evaluated yet
    contexts = [TableContext(collated, CONFIG, paper, frames)]  # the fabricated cells' config
    contexts += [TableContext(collated, cfg, paper) for cfg in shipped_configs.values()]  # inputs not yet made
    contexts += [
        TableContext(empty, cfg, paper, {k: f.iloc[:0] for k, f in frames.items()})
        for cfg in (CONFIG, *shipped_configs.values())
    ]
    for ctx in contexts:
        out = render(name, ctx)
        assert set(out) == {"md", "tex", "html"}
        assert out["md"].strip() and out["md"].endswith("\n")
        assert out["tex"].startswith((r"\begin{table}", "%"))
        assert "<table" in out["html"] or "No metrics" in out["html"]


# -- datasets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_missing_files_are_a_clear_error_naming_the_path(name, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataSourceError) as err:
        prepare_dataset(name, {"path": str(missing)}, tmp_path / "data.safetensors", 0.05, 0)
    assert str(missing) in str(err.value)
    assert not (tmp_path / "data.safetensors").exists()


def _fashion_mnist(root: Path) -> dict:
    return {"path": str(write_idx(root, 60, 20))}


def _cifar10(root: Path) -> dict:
    from .test_data import _write_cifar

    _write_cifar(root)
    return {"path": str(root), "verify_md5": False}


def _gtsrb(root: Path) -> dict:
    from .test_datasets_more import write_gtsrb

    return {"path": str(write_gtsrb(root))}


def _tinyimagenet(root: Path) -> dict:
    from .test_datasets_more import write_tiny

    return {"path": str(write_tiny(root))}


def _imagenette(root: Path) -> dict:
    from .test_datasets_more import write_imagenette

    return {"path": str(write_imagenette(root)), "size": "160px", "image_size": 16}


#: the source of a few fabricated files in each dataset's on-disk format (the loader tests' writers)
SOURCES = {"fashion_mnist": _fashion_mnist, "cifar10": _cifar10, "gtsrb": _gtsrb, "tinyimagenet": _tinyimagenet,
           "imagenette": _imagenette}  # fmt: skip


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_prepares_splits_whose_meta_describes_them(name, tmp_path):
    if name not in SOURCES:
        pytest.skip(f"no fabricated files in the {name} format")
    meta = prepare_dataset(name, SOURCES[name](tmp_path / "raw"), tmp_path / "data.safetensors", 0.5, 0)
    splits = load_prepared(tmp_path / "data.safetensors")
    assert splits.meta["dataset"] == name and splits.meta["sha256"] == meta["sha256"]
    for part in (splits.train, splits.test, splits.defender):
        assert part.x.dtype == torch.uint8 and part.x.ndim == 4 and len(part.x) == len(part.y) > 0
        assert part.x.shape[1:] == (meta["in_channels"], meta["image_size"], meta["image_size"])
        assert 0 <= int(part.y.min()) and int(part.y.max()) < meta["num_classes"]
    assert len(meta["mean"]) == len(meta["std"]) == meta["in_channels"]
    assert all(0 <= m <= 1 for m in meta["mean"]) and all(s > 0 for s in meta["std"])


# -- figures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def figure_cell(tmp_path_factory, idx_dir) -> Path:
    """tests/fabricate.py's results folder: data, FP / quantized / defended models, a LAC curve."""
    from qcbench.figures import cell_file

    root = make_cell(tmp_path_factory.mktemp("cell"), idx_dir)
    lac_curve(root / cell_file(CONFIG, CONFIG["figures"]["fig2"], defense="lac", file="lac_curve.parquet"))
    return root


@pytest.mark.parametrize("name", FIGURES.names())
def test_figure_draws_from_the_files_it_declares(name, figure_cell, one_torch_thread):
    import matplotlib.pyplot as plt

    assert name in CONFIG["figures"], f"tests/fabricate.py has no figures.{name} entry to draw it from"
    inputs = figure_inputs(name, CONFIG)
    assert inputs and all(isinstance(p, str) and p.startswith(("results/", "resources/")) for p in inputs.values())
    assert all((figure_cell / p).is_file() for p in inputs.values()), inputs  # workdir-relative, all fabricated
    result = render_figure(name, CONFIG, {k: str(figure_cell / p) for k, p in inputs.items()})
    try:
        assert isinstance(result, FigureResult) and result.figure.axes
        assert result.caption.startswith(f"Figure {name.removeprefix('fig')} (")
        json.dumps(result.numbers)  # saved beside the image
    finally:
        plt.close(result.figure)


# -- detectors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "int4_sim", "int8_dynamic"])
@pytest.mark.parametrize("name", DETECTORS.names())
def test_detector_builds_from_its_defaults_and_scores_the_tiny_model(name, precision, trained, tiny_splits):
    cls = DETECTORS.get(name)
    sig = inspect.signature(cls)
    assert all(p.default is not p.empty for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD)
    defaults = {k: p.default for k, p in sig.parameters.items() if p.default is not p.empty}
    assert create_detector(name, {}).name == name
    detector = create_detector(name, tiny_budget(defaults))
    inputs = DetectionInputs(tiny_splits, create_trigger(TRIGGER, 28), 0, 0.1, seed=0)
    model = at_precision(trained, precision, create_scheme("qa", 4), tiny_splits.defender, images=64)
    before = state(model)
    if cls.gradient_based and precision == "int8_dynamic":  # PyTorch's dynamic int8 modules pass no gradient
        with pytest.raises(NoGradientError):
            detector.detect(model, inputs)
        return
    verdicts = []
    for _ in range(2):  # seeded as the detect stage seeds each detector: the same verdict twice
        torch.manual_seed(0)
        verdicts.append(detector.detect(copy.deepcopy(model), inputs))
    verdict = verdicts[0]
    assert isinstance(verdict, Verdict) and isinstance(verdict.detected, bool)
    assert verdict.status in STATUSES and math.isfinite(verdict.score) and math.isfinite(verdict.threshold)
    assert json.loads(json.dumps(verdict.detail)) == json.loads(json.dumps(verdicts[1].detail))  # stored as JSON
    assert verdicts[1] == verdict, f"{name} is not reproducible under a fixed seed"
    assert same_state(state(model), before)
