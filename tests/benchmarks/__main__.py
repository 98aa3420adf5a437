"""``python -m tests.benchmarks [--run DIR] [--only a,b] [--out PATH]``: run the suite, write summary.json."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from tests.benchmarks import measure
from tests.benchmarks.summary import SECTIONS, build_summary, local_default, write_summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    ap.add_argument("--run", default=".", help="a finished local-default run (repository root of it)")
    ap.add_argument("--out", default="results/benchmarks/summary.json")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument(
        "--lac-fixed",
        default=f"150,{measure.REFERENCE_ITERATIONS}",
        help="fixed LAC iteration counts to compare against (the goal: the reference code's 10,000 if listed)",
    )
    ap.add_argument(
        "--lac-early-stop",
        type=json.loads,
        default=measure.EARLY_STOP,
        help=f"LAC's early_stop as JSON (default {json.dumps(measure.EARLY_STOP)})",
    )
    ap.add_argument("--thread-seconds", type=float, default=30.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    run = Path(args.run).resolve()
    want = [s for s in args.only.split(",") if s]
    bad = set(want) - set(SECTIONS)
    if bad:
        ap.error(f"unknown section(s) {sorted(bad)}; choose from {SECTIONS}")
    splits = measure.load_data(run) if {"train_loop", "quant_forward", "lac_early_stop"} & set(want) else None
    jobs = {
        "train_loop": lambda: measure.train_loop(splits),
        "quant_forward": lambda: measure.quant_forward(splits),
        "lac_early_stop": lambda: measure.lac_early_stop(
            run, splits, fixed=tuple(int(n) for n in args.lac_fixed.split(",")), early_stop=args.lac_early_stop
        ),
        "local_default": lambda: local_default(run),
        "plan_paper": measure.plan_paper,
        "threads": lambda: measure.threads(run, args.thread_seconds),
    }
    sections, skipped = {}, {}
    for name in want:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            sections[name] = jobs[name]()
        except (FileNotFoundError, RuntimeError) as err:  # e.g. no finished run to read
            skipped[name] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        print(f"[bench] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        if name in sections:
            print(measure.dump(sections[name]), file=sys.stderr, flush=True)
    path = write_summary(build_summary(sections, run, skipped), args.out)
    print(f"[bench] wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
