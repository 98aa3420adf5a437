"""One function per pipeline stage. Snakemake scripts (and the CLI) call these; they take the
resolved config plus paths and never build paths themselves."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from qcbench import io, provenance
from qcbench.attacks import create_attack
from qcbench.cells import calibration, quantize_cell, scheme_for
from qcbench.data import ImageSet, load_prepared, prepare_dataset
from qcbench.defenses import create_defense
from qcbench.metrics import evaluate as evaluate_model
from qcbench.quant import calibration_batches
from qcbench.train import bf16_native
from qcbench.train import train_clean as _train_clean
from qcbench.triggers import create_trigger

if TYPE_CHECKING:  # imported where used: training and quantizing jobs never need pandas (~0.5 s)
    from collections.abc import Sequence

    import pandas as pd


def resolve_device(cfg: dict) -> torch.device:
    want = cfg.get("device", "auto")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(want)


def setup(cfg: dict, threads: int = 1, seed: int = 0) -> torch.device:
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    return resolve_device(cfg)


def prepare_data(cfg: dict, dataset: str, out: str) -> dict:
    d = cfg["data"]
    return prepare_dataset(dataset, d["sources"][dataset], out, d["defender_fraction"], d["defender_seed"])


def _base_meta(cfg: dict, splits, dataset: str, arch: str, seed: int) -> dict:
    m = splits.meta
    return {
        "dataset": dataset,
        "arch": arch,
        "arch_kwargs": cfg["archs"].get(arch, {}),
        "seed": seed,
        "num_classes": m["num_classes"],
        "in_channels": m["in_channels"],
        "image_size": m["image_size"],
        "mean": m["mean"],
        "std": m["std"],
        "attack": None,
        "scheme": None,
        "scheme_name": None,
        "bits": 32,
        "defense": "none",
        "config_hash": provenance.config_hash(cfg),
    }


def _new_model(meta: dict, device) -> torch.nn.Module:
    """A freshly initialised model of ``meta``'s architecture (see :func:`_base_meta`: no scheme,
    so :func:`qcbench.io.build_model` returns the plain FP model)."""
    return io.build_model(meta).to(device)


def train_clean(cfg: dict, dataset: str, arch: str, seed: int, data: str, out: str, threads: int = 1) -> None:
    device = setup(cfg, threads, seed)
    splits = load_prepared(data)
    meta = _base_meta(cfg, splits, dataset, arch, seed)
    model = _new_model(meta, device)
    t0 = time.perf_counter()
    history = _train_clean(model, splits.train, cfg["clean"][dataset], seed, device)
    run = {"stage": "train_clean", "wall_s": time.perf_counter() - t0, "loss": history}
    io.save_model(model, out, meta | run | {"bf16_native": bf16_native(device)})


def run_attack(
    cfg: dict, attack: str, dataset: str, arch: str, seed: int, data: str, init: str | None, out: str, threads: int = 1
) -> None:
    """Train the backdoored FP model of ``attack``: from the model file ``init`` (the clean model,
    or another attack's FP model: see :func:`qcbench.attacks.init_source`), or, for an attack
    that starts from scratch (``init`` None), from a freshly built ``arch``."""
    device = setup(cfg, threads, seed)
    splits = load_prepared(data)
    if init:
        model, meta = io.load_model(init, device)
        meta = meta | {"init": (meta.get("attack") or {}).get("name", "clean")}
    else:
        meta = _base_meta(cfg, splits, dataset, arch, seed)
        model = _new_model(meta, device)
    params = copy.deepcopy(cfg["attacks"][attack])
    params.update(params.pop("per_dataset", {}).get(dataset, {}))
    atk = create_attack(params.pop("method", attack), params, splits.meta["image_size"])
    atk.name = attack
    t0 = time.perf_counter()
    model = atk.run(model, splits, seed=seed, device=device)
    run = {"stage": "attack", "attack": atk.describe(), "wall_s": time.perf_counter() - t0}
    io.save_model(model, out, meta | run | {"bf16_native": bf16_native(device)})


def quantize(cfg: dict, bits: int, data: str, fp: str, out: str, threads: int = 1) -> None:
    device = setup(cfg, threads)
    splits = load_prepared(data)
    model, meta = io.load_model(fp, device)
    # an FP-level defense's purified model: in that defense entry's `scheme` when it names one
    name, scheme = scheme_for(cfg, meta, bits, (cfg["defenses"].get(meta["defense"]) or {}).get("scheme"))
    t0 = time.perf_counter()
    qmodel = quantize_cell(cfg, model, scheme, splits, device)
    io.save_model(
        qmodel,
        out,
        meta
        | {
            "stage": "quantize",
            "scheme": scheme.to_dict(),
            "scheme_name": name,
            "bits": bits,
            # a purified model's cell costs its FP defense plus this quantization
            "wall_s": time.perf_counter() - t0 + (meta.get("wall_s", 0.0) if meta["defense"] != "none" else 0.0),
        },
    )


def defend(cfg: dict, defense: str, seed: int, data: str, fp: str, quantized: str, out: str, threads: int = 1) -> None:
    device = setup(cfg, threads, seed)
    splits = load_prepared(data)
    fp_model, _ = io.load_model(fp, device)
    qmodel, meta = io.load_model(quantized, device)
    params = copy.deepcopy(cfg["defenses"][defense])
    method, family = params.pop("method"), params.pop("scheme", None)
    t0 = time.perf_counter()
    if family is not None:  # the deployer's quantizer: the FP model re-quantized in it, then defended
        family, scheme = scheme_for(cfg, meta, meta["bits"], family)
        qmodel = quantize_cell(cfg, fp_model, scheme, splits, device)
        meta = meta | {"scheme": scheme.to_dict(), "scheme_name": family}
    defended = create_defense(method, params).run(fp_model, qmodel, splits, seed=seed, device=device)
    io.save_model(defended, out, meta | {"stage": "defend", "defense": defense, "wall_s": time.perf_counter() - t0})


def _write_row(keys: dict, meta: dict, res: dict, backend: str, scheme: str, wall_s: float, out: str) -> pd.DataFrame:
    import pandas as pd

    row = {
        "dataset": keys["dataset"],
        "arch": keys["arch"],
        "attack": keys["attack"],
        "bits": int(keys["bits"]),
        "defense": keys["defense"],
        "seed": int(keys["seed"]),
        "backend": backend,
        "scheme": scheme,
        "variant": keys.get("variant", ""),
        **res,
        "wall_s": float(wall_s),
        "config_hash": meta["config_hash"],
        "git_commit": provenance.git_commit(),
        "versions": provenance.versions(),
    }
    df = pd.DataFrame([row]).astype({k: v for k, v in io.METRIC_COLUMNS.items() if k in row})
    io.check_metrics(df, out)
    io.write_parquet(df, out)
    return df


def _attack_of(meta: dict, image_size: int):
    atk = meta.get("attack")
    return (create_trigger(atk["trigger"], image_size), atk["target"]) if atk else (None, None)


def defend_fp(cfg: dict, defense: str, seed: int, data: str, fp: str, out: str, threads: int = 1) -> None:
    """An FP-level defense (FT, fine-pruning, MCR, NAD, I-BAU, FT-SAM): purify the attacked FP
    model once; the quantize stage quantizes the result at each bit width."""
    device = setup(cfg, threads, seed)
    splits = load_prepared(data)
    model, meta = io.load_model(fp, device)
    params = copy.deepcopy(cfg["defenses"][defense])
    t0 = time.perf_counter()
    purified = create_defense(params.pop("method"), params).purify(model, splits, seed=seed, device=device)
    io.save_model(purified, out, meta | {"stage": "defend_fp", "defense": defense, "wall_s": time.perf_counter() - t0})


def eval_test(cfg: dict, splits) -> ImageSet:
    """The test images every metrics row is computed on: ``eval.test_images`` drawn once with
    seed 0 (the same images for every cell, so cells compare pairwise), or the whole test set."""
    return splits.test.sample(cfg["eval"].get("test_images"))


def evaluate(cfg: dict, model_path: str, data: str, out: str, keys: dict, threads: int = 1) -> pd.DataFrame:
    """Evaluate one model file (simulated quantizer) and write its one-row metrics Parquet."""
    device = setup(cfg, threads)
    splits = load_prepared(data)
    model, meta = io.load_model(model_path, device)
    trigger, target = _attack_of(meta, splits.meta["image_size"])
    res = evaluate_model(model, eval_test(cfg, splits), trigger, target, cfg["eval"]["batch_size"], device)
    scheme = meta.get("scheme_name") or "fp"
    return _write_row(keys, meta, res, "sim", scheme, meta.get("wall_s", float("nan")), out)


def evaluate_backend(cfg: dict, backend: str, fp: str, data: str, out: str, keys: dict, threads: int = 1):
    """Quantize the FP model with a real int8 runtime (PTQ, calibrated on the defender subset)
    and write its metrics row (``backend`` = the runtime, ``defense`` = none)."""
    from qcbench.backends import evaluate_backend as run_backend

    setup(cfg, threads)
    splits = load_prepared(data)
    model, meta = io.load_model(fp, "cpu")
    trigger, target = _attack_of(meta, splits.meta["image_size"])
    calib = list(calibration_batches(splits.defender, **calibration(cfg)))
    t0 = time.perf_counter()
    res = run_backend(backend, model, calib, eval_test(cfg, splits), trigger, target, cfg["eval"]["batch_size"])
    return _write_row(keys | {"bits": 8, "defense": "none"}, meta, res, backend, backend, time.perf_counter() - t0, out)


def read_metrics(path: str) -> pd.DataFrame:
    """One metrics file, checked against the contract (:func:`qcbench.io.check_metrics`)."""
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise io.MetricsError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from None
    io.check_metrics(df, path)
    return df


def collate(paths: list[str], out: str, no_defense: Sequence[str] = ()) -> pd.DataFrame:
    """Concatenate per-model metrics into ``out``: check each file (its name in any error), refuse
    two files with the same key, add DER against the no-defense cell of the same precision and
    the same scheme (an FP-level defense at 32 bits against the FP model), check the result and
    write it atomically (nothing is written when a check fails). A cell's no-defense rows are
    "none" (the attack's own scheme) and those of the defense entries ``no_defense``
    (:func:`qcbench.plan.no_defense_entries`: ``requantize`` in a deployer's scheme), "none"
    first; a row in a scheme without one has DER NaN, so a scheme switch alone is never credited
    as a defense (a ``requantize`` row itself rates 50, no change)."""
    import pandas as pd

    from qcbench.metrics import der

    frames = [read_metrics(p).assign(_source=str(p)) for p in paths]
    if frames:
        df = pd.concat(frames, ignore_index=True)
    else:
        df = pd.DataFrame({c: pd.Series(dtype=t) for c, t in io.METRIC_COLUMNS.items()} | {"_source": []})
    key = [*io.KEY_COLUMNS, "variant"]
    dup = df[df.duplicated(key, keep=False)]
    if len(dup):
        first = dup.iloc[0]
        same = dup[(dup[key] == first[key]).all(axis=1)]._source.tolist()
        raise io.MetricsError(f"{same[0]}: the same key {dict(first[key])} also comes from {same[1:]}")
    cell = ["dataset", "arch", "attack", "bits", "seed", "backend", "scheme"]
    order = {d: i for i, d in enumerate(["none", *no_defense])}
    nodef = df[df.defense.isin(order)]
    nodef = nodef.iloc[nodef.defense.map(order).argsort(kind="stable")]
    ref = nodef.drop_duplicates(cell).set_index(cell)[["ba", "asr"]]
    ders = []
    for _, r in df.iterrows():
        k = tuple(r[c] for c in cell)
        if r.defense == "none" or k not in ref.index:
            ders.append(float("nan"))
        else:
            nd = ref.loc[k]
            ders.append(der(nd.ba, nd.asr, r.ba, r.asr))
    df["der"] = pd.Series(ders, index=df.index, dtype="float64")
    df = df.sort_values([*io.KEY_COLUMNS, "variant"], ignore_index=True)
    df = df.drop(columns="_source")
    io.check_metrics(df, f"{out} (collated)", collated=True)
    io.write_parquet(df, out)
    return df


def detect(cfg: dict, detectors, precision: str, data: str, model: str, out: str, keys: dict, threads: int = 1):
    """The detectors of the detection benchmark on one FP model at one precision
    (:func:`qcbench.detection.run.detect`)."""
    from qcbench.detection.run import detect as run_detect

    setup(cfg, threads, int(keys["seed"]))
    return run_detect(cfg, detectors, precision, data, model, out, keys)


def collate_detection(paths: list[str], out: str) -> pd.DataFrame:
    from qcbench.detection.run import collate as run_collate

    return run_collate(paths, out)


def render_table(
    name: str,
    metrics: str,
    outputs: dict[str, str],
    config: dict | None = None,
    paper: str | None = None,
    frames: dict[str, str] | None = None,
) -> None:
    """Render a registered table (``qcbench.tables.TABLES``) to each format in ``outputs``
    ({"md": path, "tex": path, …}), atomically. ``paper``: the paper-reference CSV; ``frames``:
    the extra collated files the table declared (name -> path)."""
    import pandas as pd

    from qcbench.tables import PaperReference, TableContext, render

    ctx = TableContext(
        metrics=pd.read_parquet(metrics),
        config=config or {},
        paper=PaperReference.load(paper),
        frames={k: pd.read_parquet(v) for k, v in (frames or {}).items()},
    )
    texts = render(name, ctx)
    for fmt_name, path in outputs.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path + ".tmp")
        tmp.write_text(texts[fmt_name])
        tmp.replace(path)


def lac_curve(cfg: dict, seed: int, data: str, quantized: str, out: str, keys: dict, threads: int = 1) -> None:
    """Figure 2's data for one cell (``figures.fig2``): LAC+PDA (defense ``lac``) on benign, mixed
    and all-poisoned defender data, BA/ASR against the iteration (:mod:`qcbench.lac_curve`)."""
    from qcbench.lac_curve import lac_curve as run_curve

    device = setup(cfg, threads, seed)
    splits = load_prepared(data)
    qmodel, meta = io.load_model(quantized, device)
    trigger, target = _attack_of(meta, splits.meta["image_size"])
    fig = cfg["figures"]["fig2"]
    params = {k: v for k, v in cfg["defenses"]["lac"].items() if k != "method"}
    df = run_curve(
        qmodel, splits, trigger, target, params, seed=seed, eval_every=fig["eval_every"],
        poison_fraction=fig.get("poison_fraction", 0.1), test=splits.test.sample(fig.get("test_images")),
        batch_size=cfg["eval"]["batch_size"], device=device,
    )  # fmt: skip
    io.write_parquet(df.assign(**keys, config_hash=meta["config_hash"]), out)


def render_figure(name: str, inputs: dict[str, str], outputs: dict[str, str], config: dict, threads: int = 1) -> dict:
    """Draw a registered figure (``qcbench.figures.FIGURES``) from its declared inputs and write
    ``outputs`` ({"png": …, "pdf": …, "json": …}) atomically; returns the measured numbers."""
    from qcbench import figures

    setup(config, threads, seed=0)
    result = figures.render_figure(name, config, inputs)
    figures.save_figure(result, outputs)
    return result.numbers


def render_report(notebook: str, results: str, html: str, executed: str | None = None, timeout: int = 900) -> None:
    """Execute the report notebook with papermill (parameter ``results``: the results folder) and
    convert it to one standalone HTML file (images embedded, input cells hidden), atomically."""
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    html = Path(html)
    executed = Path(executed) if executed else html.with_name("report.ipynb")
    html.parent.mkdir(parents=True, exist_ok=True)
    executed.parent.mkdir(parents=True, exist_ok=True)
    tmp_nb = executed.with_name(executed.name + ".tmp.ipynb")
    tmp_html = html.with_name(html.name + ".tmp")
    try:
        pm.execute_notebook(
            notebook,
            str(tmp_nb),
            parameters={"results": str(Path(results).resolve())},
            kernel_name="python3",
            progress_bar=False,
            execution_timeout=timeout,
            cwd=str(Path(results).resolve().parent),
        )
        nb = nbformat.read(tmp_nb, as_version=4)
        exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
        exporter.mathjax_url = exporter.require_js_url = ""  # no formulas or widgets: fetch nothing
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": "qcbench report"}})
        body = body.replace('<script src=""> </script>', "")
        tmp_html.write_text(body, encoding="utf-8")
        tmp_nb.replace(executed)
        tmp_html.replace(html)
    finally:
        tmp_nb.unlink(missing_ok=True)
        tmp_html.unlink(missing_ok=True)
