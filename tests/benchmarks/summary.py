"""The parts of the benchmark suite that need no timing: reading a finished run's ``benchmark:``
files and Snakemake logs (``local_default``), and writing ``results/benchmarks/summary.json``.

Every key written is listed in :data:`KEYS` (and in the README's "Benchmarks" section); the tests
check that a summary built from a fabricated run holds exactly these keys.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import json
import os
import platform
import re
from pathlib import Path

# Top-level keys of summary.json, and the keys of each section (None: free-form or a list).
KEYS: dict[str, tuple[str, ...] | None] = {
    "schema": None,
    "timestamp": None,
    "git_commit": None,
    "torch_version": None,
    "machine": ("platform", "processor", "cpu_count", "python", "torch", "torch_threads", "load_average"),
    "run_dir": None,
    "train_loop": (
        "steps",
        "batch_size",
        "threads",
        "rounds",
        "configured_channels_last",
        "configured_amp",
        "autocast",
        "images_per_s_fit_configured",
        "images_per_s_fit",
        "images_per_s_fit_channels_last",
        "images_per_s_plain",
        "images_per_s_plain_channels_last",
        "ratio",
        "ratio_contiguous",
        "ratio_channels_last",
        "ratio_both_channels_last",
        "goal",
        "meets_goal",
    ),
    "quant_forward": ("batch_size", "threads", "reps", "fp_ms", "quantized", "train_fp_ms", "train_quantized"),
    "lac_early_stop": (
        "cell",
        "early_stop",
        "pda_iterations",
        "early",
        "fixed",
        "reference_protocol",
        "ratio",
        "delta_asr",
        "delta_ba",
        "meets_goal",
    ),
    "local_default": (
        "benchmarks_dir",
        "jobs_benchmarked",
        "stages",
        "dominant",
        "stage_total_s",
        "wall_s",
        "wall_source",
        "jobs_run",
        "metadata_span_s",
    ),
    "plan_paper": ("command", "wall_s", "cpu_s", "jobs", "goal_s", "meets_goal"),
    "threads": ("seconds", "one_job_two_threads", "two_jobs_one_thread", "ratio", "choice"),
    "skipped": None,
}

SECTIONS = ("train_loop", "quant_forward", "lac_early_stop", "local_default", "plan_paper", "threads")
STAGE_KEYS = ("jobs", "total_s", "mean_s", "max_s", "cpu_s", "share")


def machine_info() -> dict:
    import torch

    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": load,
    }


def _read_tsv(path: Path) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: benchmark file without a data row")
    return rows[-1]


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def stage_totals(bench_dir: str | Path) -> dict[str, dict]:
    """Per rule (the first folder under ``results/benchmarks/``): job count, total/mean/max wall
    seconds (column ``s``), total CPU seconds (``cpu_time``) and share of the summed wall time."""
    bench_dir = Path(bench_dir)
    per: dict[str, list[tuple[float, float]]] = {}
    for tsv in sorted(bench_dir.rglob("*.tsv")):
        rule = tsv.relative_to(bench_dir).parts[0]
        if rule == tsv.name:  # a file directly in the folder names itself
            rule = tsv.stem
        row = _read_tsv(tsv)
        per.setdefault(rule, []).append((_float(row.get("s")), _float(row.get("cpu_time"))))
    total = sum(s for v in per.values() for s, _ in v)
    out = {}
    for rule, v in sorted(per.items(), key=lambda kv: -sum(s for s, _ in kv[1])):
        s = [a for a, _ in v]
        out[rule] = {
            "jobs": len(v),
            "total_s": round(sum(s), 2),
            "mean_s": round(sum(s) / len(s), 2),
            "max_s": round(max(s), 2),
            "cpu_s": round(sum(c for _, c in v), 2),
            "share": round(sum(s) / total, 4) if total else 0.0,
        }
    return out


_ELAPSED = re.compile(r"^Elapsed time: (?:(\d+) days?, )?(\d+):(\d+):(\d+(?:\.\d+)?)", re.M)
_DONE = re.compile(r"^(\d+) of (\d+) steps \(100%\) done", re.M)


def snakemake_wall(run_dir: str | Path) -> tuple[float | None, int | None]:
    """Wall time and job count of the largest completed invocation in ``.snakemake/log/`` (the
    ``Elapsed time`` Snakemake prints after ``N of N steps (100%) done``)."""
    best: tuple[float | None, int | None] = (None, None)
    for log in sorted((Path(run_dir) / ".snakemake" / "log").glob("*.snakemake.log")):
        text = log.read_text(errors="replace")
        done, el = _DONE.findall(text), _ELAPSED.findall(text)
        if not done or not el:
            continue
        jobs = int(done[-1][1])
        d, h, m, s = el[-1]
        wall = int(d or 0) * 86400 + int(h) * 3600 + int(m) * 60 + float(s)
        if best[1] is None or jobs > best[1]:
            best = (wall, jobs)
    return best


def metadata_span(run_dir: str | Path) -> float | None:
    """Last job end minus first job start over Snakemake's per-output records
    (``.snakemake/metadata/``, one JSON per output with ``starttime``/``endtime``); spans every
    invocation, including later partial reruns."""
    starts, ends = [], []
    for f in (Path(run_dir) / ".snakemake" / "metadata").glob("*"):
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("starttime") is not None and rec.get("endtime") is not None:
            starts.append(float(rec["starttime"]))
            ends.append(float(rec["endtime"]))
    return round(max(ends) - min(starts), 2) if starts else None


def local_default(run_dir: str | Path) -> dict:
    """Per-stage totals of a run's ``results/benchmarks/`` and the run's wall time."""
    bench = Path(run_dir) / "results" / "benchmarks"
    if not bench.is_dir():
        raise FileNotFoundError(f"{bench}: no benchmark folder (run the local default first, or pass BENCH_RUN)")
    stages = stage_totals(bench)
    wall, jobs = snakemake_wall(run_dir)
    return {
        "benchmarks_dir": str(bench),
        "jobs_benchmarked": sum(v["jobs"] for v in stages.values()),
        "stages": stages,
        "dominant": [r for r, v in stages.items() if v["share"] >= 0.1] or list(stages)[:1],
        "stage_total_s": round(sum(v["total_s"] for v in stages.values()), 2),
        "wall_s": None if wall is None else round(wall, 2),
        "wall_source": "snakemake_log" if wall is not None else None,
        "jobs_run": jobs,
        "metadata_span_s": metadata_span(run_dir),
    }


def build_summary(sections: dict, run_dir: str | Path | None, skipped: dict | None = None) -> dict:
    import torch
    from qcbench import provenance

    out = {
        "schema": 1,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": provenance.git_commit(),
        "torch_version": torch.__version__,
        "machine": machine_info(),
        "run_dir": None if run_dir is None else str(run_dir),
        **{k: None for k in SECTIONS},  # a section not run stays null (reason under "skipped")
        **sections,
        "skipped": dict(skipped or {}),
    }
    unknown = set(out) - set(KEYS)
    if unknown:
        raise KeyError(f"summary keys not documented in KEYS: {sorted(unknown)}")
    return out


def write_summary(summary: dict, path: str | Path) -> Path:
    """Write ``summary`` as JSON atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    return path


def encode_metadata_name(output: str) -> str:
    """Snakemake's file name for an output's metadata record (base64 of the path); for tests."""
    return base64.b64encode(output.encode()).decode()
