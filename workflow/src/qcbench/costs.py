"""Measured job costs: every rule's ``benchmark:`` file of a run, per rule x architecture x dataset,
as CPU seconds per unit of work (per image, training sample or iteration) and peak RSS; and from
them the cost of a planned run (the paper config's jobs at the paper's counts).

A job's CPU time is a start-up floor (Python, torch and qcbench imports, data loading) plus work
proportional to its units (:func:`work_units`). ``cost_table`` divides the CPU time above the
run's floor (its cheapest job) by the units; ``estimate`` multiplies that rate by each planned
job's units at the planned config's counts and the real datasets' sizes (:data:`DATASET_SIZES`),
then adds the floor back. Snakemake's ``benchmark:`` TSV holds ``s`` (wall), ``max_rss`` (MB) and
``cpu_time`` (s) per job.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pandas as pd

# (train, test) images of the real datasets (ImageNette: the 320px archive's train / val split)
DATASET_SIZES = {
    "cifar10": (50000, 10000),
    "tinyimagenet": (100000, 10000),
    "imagenette": (9469, 3925),
    "gtsrb": (39209, 12630),
    "fashion_mnist": (60000, 10000),
}
# bytes of one prepared uint8 image: channels x side x side at the configured image size
_DEFAULT_SIDES = {"cifar10": 32, "tinyimagenet": 64, "imagenette": 224, "gtsrb": 32, "fashion_mnist": 28}

# the fields of each rule's benchmark path below results/benchmarks/<rule>/ (workflow/rules/*.smk)
_MODEL = r"(?P<dataset>[^/]+)/(?P<arch>[^/]+)/(?P<attack>[^/]+)"
_CELL = _MODEL + r"/w(?P<bits>\d+)/(?P<defense>[^/]+)/seed(?P<seed>\d+)"
PATTERNS = {
    "prepare_data": r"(?P<dataset>[^/]+)",
    "train_clean": r"(?P<dataset>[^/]+)/(?P<arch>[^/]+)/seed(?P<seed>\d+)",
    "attack": _MODEL + r"/seed(?P<seed>\d+)",
    "quantize": _CELL,
    "defend": _CELL,
    "defend_fp": _MODEL + r"/(?P<defense>[^/]+)/seed(?P<seed>\d+)",
    "evaluate": _CELL,
    "evaluate_backend": _MODEL + r"/(?P<backend>[^/]+)/seed(?P<seed>\d+)",
    "detect": _MODEL + r"/seed(?P<seed>\d+)/(?P<precision>[^/]+)",
    "lac_curve": _MODEL + r"/w(?P<bits>\d+)/seed(?P<seed>\d+)",
    "table": r"(?P<table>[^/]+)",
    "figure": r"(?P<figure>[^/]+)",
    "collate": r"collate",
}
FIELDS = ("dataset", "arch", "attack", "bits", "defense", "seed", "backend", "precision", "table", "figure")
# the work unit each rule's cost is counted in
UNITS = {
    "prepare_data": "image decoded",
    "train_clean": "training sample",
    "attack": "training sample",
    "quantize": "calibration image",
    "defend": "iteration per layer unit",
    "defend_fp": "defender image x epoch",
    "evaluate": "test image",
    "evaluate_backend": "test image",
}


def parse_benchmark_path(rel: str) -> dict | None:
    """``<rule>/<fields>.tsv`` (relative to results/benchmarks) as {rule, fields...}; None if unknown."""
    rel = rel.removesuffix(".tsv")
    if rel == "report":
        return {"rule": "report"}
    rule, _, rest = rel.partition("/")
    m = re.fullmatch(PATTERNS.get(rule, "(?!)"), rest)
    return {"rule": rule, **m.groupdict()} if m else None


def read_benchmarks(run: str | Path) -> pd.DataFrame:
    """One row per benchmark file of ``run``/results/benchmarks: rule, wildcards, ``s``, ``cpu_s``,
    ``max_rss_mb`` (the mean over the file's lines, one per repeat)."""
    base = Path(run) / "results" / "benchmarks"
    rows = []
    for f in sorted(base.rglob("*.tsv")):
        info = parse_benchmark_path(f.relative_to(base).as_posix())
        if info is None:
            continue
        with open(f, newline="") as fh:
            lines = list(csv.DictReader(fh, delimiter="\t"))
        if not lines:
            continue

        def mean(col: str, lines=lines) -> float:
            vals = [float(r[col]) for r in lines if r.get(col) not in (None, "", "-", "NA")]
            return sum(vals) / len(vals) if vals else float("nan")

        rows.append({**dict.fromkeys(FIELDS), **info, "s": mean("s"), "cpu_s": mean("cpu_time"),
                     "max_rss_mb": mean("max_rss")})  # fmt: skip
    return pd.DataFrame(rows, columns=["rule", *FIELDS, "s", "cpu_s", "max_rss_mb"])


def _samples(spec: dict | None, n: int) -> int:
    """Training samples of ``spec``'s epochs over a set of ``n``."""
    if not spec:
        return 0
    per = spec.get("samples_per_epoch")
    return int(spec.get("epochs", 1)) * min(n, int(per) if per else n)


def work_units(cfg: dict, job: dict, sizes: dict[str, tuple[int, int]]) -> float:
    """The units of work (:data:`UNITS`) of ``job`` (a rule and its wildcards) under the resolved
    config ``cfg``, with ``sizes[dataset] = (train, test)`` images; 1 for the rules counted per job."""
    rule, ds = job["rule"], job.get("dataset")
    if rule not in UNITS or ds not in sizes:
        return 1.0
    n_train, n_test = sizes[ds]
    n_def = max(1, round(n_train * cfg["data"]["defender_fraction"]))
    if rule == "prepare_data":
        return n_train + n_test
    if rule == "train_clean":
        return _samples(cfg["clean"][ds], n_train)
    if rule == "attack":
        spec = dict(cfg["attacks"][job["attack"]])
        spec.update((spec.get("per_dataset") or {}).get(ds, {}))
        if "stage2" in spec:  # PQBackdoor's two stages
            return _samples(spec.get("stage1"), n_train) + _samples(spec["stage2"], n_train) or 1
        return _samples(spec, n_train) or 1
    if rule == "quantize":
        return min(cfg["quant"]["calib_images"], n_def)
    if rule in ("evaluate", "evaluate_backend"):
        return min(cfg["eval"].get("test_images") or n_test, n_test)
    spec = cfg["defenses"].get(job.get("defense"), {})
    if rule == "defend":  # layer-wise defenses: steps per unit and PDA's steps; others: per job
        pda = (spec.get("pda_iterations") or 0) if spec.get("pda", True) else 0
        return ((spec.get("iterations") or 0) + pda) or 1
    epochs = sum(spec.get(k) or 0 for k in ("epochs", "te_epochs", "ft_epochs", "n_rounds"))
    return max(1, epochs) * n_def  # defend_fp


def prepared_sizes(run: str | Path) -> dict[str, tuple[int, int]]:
    """(train, test) images of each dataset prepared in ``run`` (resources/data/<dataset>/data.json)."""
    out = {}
    for meta in sorted(Path(run).glob("resources/data/*/data.json")):
        m = json.loads(meta.read_text())
        out[m["dataset"]] = (m["n_train"], m["n_test"])
    return out


def _method(job: dict) -> str:
    """The attack entry of an attack job, the defense entry of a defend / defend_fp job, else "-":
    their cost per unit differs by method (Qu-ANTI-zation runs three views of each sample)."""
    if job["rule"] == "attack":
        return job.get("attack") or "-"
    if job["rule"] in ("defend", "defend_fp"):
        return job.get("defense") or "-"
    return "-"


def cost_table(bench: pd.DataFrame, cfg: dict, sizes: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """Per rule x arch x dataset (x the attack or defense entry, for those rules): jobs, mean wall
    and CPU seconds, the unit, CPU seconds per unit above the floor (the run's cheapest job), and
    peak RSS."""
    b = bench.copy()
    b["units"] = [work_units(cfg, r, sizes) for r in b.to_dict("records")]
    floor = float(b.cpu_s.min())
    b["per_unit"] = (b.cpu_s - floor).clip(lower=0) / b.units
    b["method"] = [_method(r) for r in b.to_dict("records")]
    g = b.fillna({"arch": "-", "dataset": "-"}).groupby(["rule", "arch", "dataset", "method"], sort=True)
    out = g.agg(jobs=("s", "size"), s=("s", "mean"), cpu_s=("cpu_s", "mean"), units=("units", "mean"),
                cpu_s_per_unit=("per_unit", "mean"), max_rss_mb=("max_rss_mb", "max")).reset_index()  # fmt: skip
    out["unit"] = out.rule.map(UNITS).fillna("job")
    out.attrs["floor_cpu_s"] = floor
    return out


def parse_plan(text: str) -> list[dict]:
    """The jobs of a ``snakemake -n`` listing: {rule, wildcards...} per job."""
    jobs, rule = [], None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
            jobs.append({"rule": rule})
            continue
        m = re.match(r"^\s+wildcards: (.*)$", line)
        if m and jobs:
            jobs[-1].update(kv.split("=", 1) for kv in m.group(1).split(", ") if "=" in kv)
    return [j for j in jobs if j["rule"] != "all"]


def estimate(plan: list[dict], costs: pd.DataFrame, cfg: dict, sizes: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """Per rule: planned jobs and their CPU seconds (the floor plus the measured rate per unit of
    the same rule x arch x dataset x method, else the largest of the same rule x arch x dataset,
    rule x arch, or rule, times each job's units
    under ``cfg`` and ``sizes``), and which jobs had no measured rate at all (``unmeasured``)."""
    floor = costs.attrs.get("floor_cpu_s", 0.0)
    rate4 = {(r.rule, r.arch, r.dataset, r.method): r.cpu_s_per_unit for r in costs.itertuples()}
    rate3 = costs.groupby(["rule", "arch", "dataset"]).cpu_s_per_unit.max().to_dict()
    rate2 = costs.groupby(["rule", "arch"]).cpu_s_per_unit.max().to_dict()
    rate1 = costs.groupby("rule").cpu_s_per_unit.max().to_dict()
    rows = []
    for job in plan:
        key = (job["rule"], job.get("arch", "-"), job.get("dataset", "-"), _method(job))
        rate = rate4.get(key, rate3.get(key[:3], rate2.get(key[:2], rate1.get(key[0]))))
        units = work_units(cfg, job, sizes)
        rows.append({"rule": key[0], "cpu_s": floor + (rate or 0.0) * units, "measured": rate is not None})
    df = pd.DataFrame(rows)
    out = df.groupby("rule").agg(jobs=("cpu_s", "size"), cpu_s=("cpu_s", "sum"),
                                 unmeasured=("measured", lambda m: int((~m).sum()))).reset_index()  # fmt: skip
    return out.sort_values("cpu_s", ascending=False)


def per_plan(plans: dict[str, list[dict]], costs: pd.DataFrame, cfg: dict, sizes: dict[str, tuple[int, int]],
             factor: float | None) -> pd.DataFrame:  # fmt: skip
    """One row per named plan (e.g. the dry-run of one table's target, which lists every job the
    table needs, shared ones included): jobs, CPU-hours, GPU-hours (CPU / ``factor``), unmeasured jobs."""
    rows = []
    for name, plan in plans.items():
        est = estimate(plan, costs, cfg, sizes) if plan else pd.DataFrame(columns=["jobs", "cpu_s", "unmeasured"])
        cpu_h = float(est.cpu_s.sum()) / 3600
        rows.append({"plan": name, "jobs": int(est.jobs.sum()), "cpu_h": cpu_h,
                     "gpu_h": cpu_h / factor if factor else float("nan"),
                     "unmeasured": int(est.unmeasured.sum())})  # fmt: skip
    return pd.DataFrame(rows, columns=["plan", "jobs", "cpu_h", "gpu_h", "unmeasured"])


def data_mb(dataset: str, sizes: dict[str, tuple[int, int]], side: int | None = None) -> float:
    """MB of the prepared uint8 images of ``dataset`` (3 channels) at ``side`` px."""
    side = side or _DEFAULT_SIDES.get(dataset, 32)
    return sum(sizes[dataset]) * 3 * side * side / 2**20


def paper_rss_mb(costs: pd.DataFrame, run_sizes: dict, paper_sizes: dict) -> pd.Series:
    """Per row of ``costs``: its measured peak RSS with the run's prepared images of its dataset
    replaced by the planned ones (NaN where the dataset's sizes are not known; the rows without a
    dataset keep their peak)."""

    def one(r) -> float:
        if r.dataset in run_sizes and r.dataset in paper_sizes:
            return r.max_rss_mb - data_mb(r.dataset, run_sizes) + data_mb(r.dataset, paper_sizes)
        return r.max_rss_mb if r.dataset == "-" else float("nan")

    return pd.Series([one(r) for r in costs.itertuples()], index=costs.index, dtype=float)


def mem_mb(costs: pd.DataFrame, run_sizes: dict, paper_sizes: dict, margin: float = 1.5) -> dict[str, int]:
    """Per rule, a ``mem_mb`` for the planned sizes: the largest :func:`paper_rss_mb` of its rows
    times ``margin``, rounded up to whole GB."""
    out: dict[str, int] = {}
    for rule, mb in zip(costs.rule, paper_rss_mb(costs, run_sizes, paper_sizes), strict=True):
        if not math.isnan(mb):
            out[rule] = max(out.get(rule, 0), int(math.ceil(mb * margin / 1000.0)) * 1000)
    return out


#: A100-class GPU throughput assumed for the CPU -> GPU factor: ResNet-18 trains on 2,500 CIFAR-10
#: images/s (fp32, batch 128; docs/cluster.md's stated assumption, not measured here)
GPU_IMAGES_PER_S = 2500.0


def gpu_factor(costs: pd.DataFrame) -> float | None:
    """How many times faster the GPU is than this run's CPU: the measured CPU seconds per
    training sample of ResNet-18's clean CIFAR-10 model times :data:`GPU_IMAGES_PER_S`."""
    row = costs[(costs.rule == "train_clean") & (costs.arch == "resnet18") & (costs.dataset == "cifar10")]
    return float(row.cpu_s_per_unit.iloc[0]) * GPU_IMAGES_PER_S if len(row) else None
