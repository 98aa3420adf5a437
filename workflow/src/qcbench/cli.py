"""``qcbench`` command line: inspect the registries, check configuration files, purify a received model,
measure a trigger's natural rate per target class, archive a finished run for reviewers, fabricate
stand-in datasets in their real on-disk formats."""

from __future__ import annotations

import argparse
import sys


def _list(args) -> int:
    from qcbench.attacks import ATTACKS
    from qcbench.backends import BACKENDS
    from qcbench.data import DATASETS
    from qcbench.defenses import DEFENSES
    from qcbench.models import MODELS
    from qcbench.quant import SCHEMES
    from qcbench.tables import TABLES
    from qcbench.triggers import TRIGGERS

    if not args.defaults:
        for reg in (DATASETS, MODELS, SCHEMES, TRIGGERS, ATTACKS, DEFENSES, BACKENDS, TABLES):
            print(f"{reg.kind + 's':22s} {', '.join(reg.names())}")
        return 0
    import yaml

    from qcbench.defenses.base import defaults_of

    out = {
        "attacks": {n: {"target": "(required)", "trigger": "(required)", **ATTACKS.get(n).defaults_of()}
                    for n in ATTACKS.names()},
        "defenses": {n: {"label": DEFENSES.get(n).label, **defaults_of(n)} for n in DEFENSES.names()},
    }  # fmt: skip
    print(yaml.safe_dump(out, sort_keys=False, default_flow_style=None, width=100), end="")
    return 0


def _check(args) -> int:
    from qcbench.config import ConfigError, check_config, load_config

    try:
        check_config(load_config(*args.configs, resolve=False, workdir=args.workdir), workdir=args.workdir)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print("configuration is valid")
    return 0


def _json_arg(value: str):
    """A JSON value given inline or as the path of a JSON file."""
    import json
    from pathlib import Path

    try:
        return json.loads(Path(value).read_text() if Path(value).is_file() else value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not JSON or a JSON file: {value!r} ({err})") from err


def _purify(args) -> int:
    from qcbench.io import ModelFileError
    from qcbench.purify import PurifyError, purify

    try:
        summary = purify(
            args.checkpoint,
            args.images,
            args.out,
            arch=args.arch,
            num_classes=args.num_classes,
            in_channels=args.in_channels,
            mean=args.mean,
            std=args.std,
            arch_kwargs=args.arch_kwargs,
            bits=args.bits,
            scheme=args.scheme,
            defense=args.defense,
            params=args.params,
            iterations=args.iterations,
            labeled=args.labeled,
            trigger=args.trigger,
            target=args.target,
            triggered=args.triggered,
            export=args.export,
            deploy=args.deploy,
            max_images=args.max_images,
            seed=args.seed,
            threads=args.threads,
            device=args.device,
        )
    except (ModelFileError, PurifyError) as err:
        print(f"qcbench purify: {err}", file=sys.stderr)
        return 2
    print(f"purified model: {summary['outputs']['model']} (summary: {args.out}/summary.json)")
    if "onnx" in summary["outputs"]:
        print(f"ONNX QDQ model: {summary['outputs']['onnx']}")
    for name, m in (summary["metrics"] or {}).items():
        shown = [f"{label} {m[key]:.2f}" for key, label in (("ba", "BA"), ("asr", "ASR")) if m.get(key) is not None]
        print(f"  {name:11s} {'  '.join(shown)}")
    print(summary["safe_for"])
    return 0


def _natural_rate(args) -> int:
    import torch

    from qcbench.data import DataSourceError, load_prepared
    from qcbench.io import ModelFileError, load_model
    from qcbench.metrics import natural_rates
    from qcbench.triggers import create_trigger

    torch.set_num_threads(max(1, args.threads))
    try:
        splits = load_prepared(args.data)
        model, _ = load_model(args.model, "cpu")
        trigger = create_trigger(args.trigger, splits.meta["image_size"])
    except (ModelFileError, DataSourceError, OSError, KeyError, ValueError) as err:
        print(f"qcbench natural-rate: {err}", file=sys.stderr)
        return 2
    test = splits.test.sample(args.test_images)
    rates = natural_rates(model, test, trigger, classes=splits.meta["num_classes"])
    print(f"{len(test)} test images; % of the other classes' triggered images predicted as each class:")
    for t, r in enumerate(rates):
        print(f"  class {t:3d}: {r:6.2f}")
    return 0


def _archive(args) -> int:
    from pathlib import Path

    from qcbench.archive import MANIFEST, ArchiveError, build_archive, write_manifest

    root = Path(args.root)
    try:
        if args.manifest_only:
            print(write_manifest(root.resolve()))
            return 0
        out = build_archive(root, Path(args.out) if args.out else None)
    except ArchiveError as err:
        print(f"qcbench archive: {err}", file=sys.stderr)
        return 2
    print(f"wrote {root / 'results' / MANIFEST} and {out}")
    return 0


def _fabricate(args) -> int:
    from pathlib import Path

    from qcbench.fabricate import fabricate

    for name in args.datasets:
        kwargs = {"seed": args.seed} | ({"size": args.imagenette_size} if name == "imagenette" else {})
        print(f"{name}: wrote {fabricate(name, Path(args.root) / name, **kwargs)}")
    return 0


def _add_fabricate(sub) -> None:
    from qcbench.fabricate import FABRICATORS

    p = sub.add_parser(
        "fabricate",
        help="write stand-in datasets (a few hundred learnable images) in their real on-disk formats",
        description="Write each dataset under ROOT/<dataset> in the layout its loader reads "
        "(qcbench.fabricate): for smoke runs of the paper config without the real archives "
        "(config/smoke.yaml points data.sources at resources/fabricated/<dataset>).",
    )
    p.add_argument("datasets", nargs="*", default=FABRICATORS.names(), help=f"default: {' '.join(FABRICATORS.names())}")
    p.add_argument("--root", default="resources/fabricated", help="parent folder (default: resources/fabricated)")
    p.add_argument("--imagenette-size", default="320px", help="ImageNette archive layout: 320px (default), 160px, full")
    p.add_argument("--seed", type=int, default=0)


def _costs(args) -> int:
    from pathlib import Path

    from qcbench import costs as C
    from qcbench.config import config_dir, load_config

    run = Path(args.run)
    bench = C.read_benchmarks(run)
    if bench.empty:
        print(f"qcbench costs: no benchmark files under {run / 'results' / 'benchmarks'}", file=sys.stderr)
        return 2
    sizes = C.prepared_sizes(run)
    table = C.cost_table(bench, load_config(*args.config, workdir=run), sizes)
    table["paper_rss_mb"] = C.paper_rss_mb(table, sizes, C.DATASET_SIZES)  # at the real datasets' sizes
    if args.out:
        table.to_csv(args.out, index=False)
    print(f"{len(bench)} benchmark files; floor (the cheapest job) {table.attrs['floor_cpu_s']:.1f} CPU s\n")
    print(table.to_markdown(index=False, floatfmt=".4g"))
    if not args.plan:
        return 0
    plan_cfg = load_config(*(args.plan_config or [config_dir(run) / "config.yaml"]), workdir=run)
    plan_sizes = C.DATASET_SIZES if args.plan_sizes == "real" else {**C.DATASET_SIZES, **sizes}
    factor = args.gpu_factor or C.gpu_factor(table)
    plans = {Path(f).stem: C.parse_plan(Path(f).read_text()) for f in args.plan}
    plan = C.estimate(next(iter(plans.values())), table, plan_cfg, plan_sizes)
    at = " ".join(args.plan_config) or "the paper config"
    print(f"\nplanned: {args.plan[0]} ({int(plan.jobs.sum())} jobs) at {at}")
    if factor:
        plan["gpu_h"] = plan.cpu_s / factor / 3600
    print(plan.to_markdown(index=False, floatfmt=".4g"))
    total = plan.cpu_s.sum()
    print(f"\ntotal {total / 3600:.1f} CPU-hours on this machine", end="")
    if factor:
        print(f"; / {factor:.1f} (CPU -> GPU: {C.GPU_IMAGES_PER_S:.0f} ResNet-18 CIFAR images/s assumed on the GPU)"
              f" = {total / factor / 3600:.1f} GPU-hours")  # fmt: skip
    else:
        print()
    if len(plans) > 1:
        per = C.per_plan(plans, table, plan_cfg, plan_sizes, factor)
        print("\neach plan alone (its jobs and every job they need):")
        print(per.to_markdown(index=False, floatfmt=".4g"))
        if args.plans_out:
            per.to_csv(args.plans_out, index=False)
    print("mem_mb at the real datasets' sizes (peak RSS x 1.5):", C.mem_mb(table, sizes, C.DATASET_SIZES))
    return 0


def _sections(args) -> int:
    from qcbench.config import ConfigError, load_config
    from qcbench.plan import sections

    try:
        cfg = load_config(*args.configs, workdir=args.workdir)
    except ConfigError as e:
        print(f"qcbench sections: {e}", file=sys.stderr)
        return 2
    for name, targets in sections(cfg).items():
        print(name, *targets, sep="\t")
    return 0


def _add_sections(sub) -> None:
    p = sub.add_parser(
        "sections",
        help="print the targets of each part of `all` (the main grid, each table, each figure)",
        description="One line per part of `all` (qcbench.plan.sections): its name, a tab, and its Snakemake "
        "targets, tab-separated. `snakemake -n <targets>` then plans that part alone (`make costs` does).",
    )
    p.add_argument("configs", nargs="*", help="overlays, as given to --configfile (default: the local default)")
    p.add_argument("--workdir", default=".", help="folder relative data paths are resolved from")


def _add_costs(sub) -> None:
    p = sub.add_parser(
        "costs",
        help="collate a run's benchmark files per rule x arch x dataset; estimate a planned run from them",
        description="Read RUN/results/benchmarks (every rule's benchmark: file) and print, per rule x arch "
        "x dataset, CPU seconds per unit of work and peak RSS (qcbench.costs). With --plan (the output of "
        "`snakemake -n`), the planned jobs' CPU- and GPU-hours at the planned config's counts.",
    )
    p.add_argument("--run", default=".", help="the run's working directory (default: .)")
    p.add_argument("--config", nargs="*", default=[], help="the run's --configfile overlays (default: local default)")
    p.add_argument(
        "--plan",
        nargs="*",
        default=[],
        help="`snakemake -n` listings of the jobs to estimate: the first per rule, and with several, "
        "one row per listing (e.g. one per table target)",
    )
    p.add_argument("--plans-out", help="with several --plan listings, also write their rows as CSV")
    p.add_argument("--plan-config", nargs="*", default=[], help="the plan's overlays (default: the paper config)")
    p.add_argument(
        "--plan-sizes",
        choices=["real", "run"],
        default="real",
        help="dataset sizes of the plan: the real datasets' (default) or those prepared in --run",
    )
    p.add_argument("--gpu-factor", type=float, help="GPU speed-up over this CPU (default: from train_clean)")
    p.add_argument("--out", help="also write the per-rule table as CSV")


def _add_archive(sub) -> None:
    p = sub.add_parser(
        "archive",
        help="write results/MANIFEST.sha256 and a reviewer tar.gz of the run and the repository",
        description="Write results/MANIFEST.sha256 (sha256sum -c format) and one tar.gz holding "
        "results/ and the repository files needed to check and rerun it (qcbench.archive).",
    )
    p.add_argument("--root", default=".", help="repository root (default: .)")
    p.add_argument("--out", help="archive path (default: results/archive/qcbench-<date>-<commit>.tar.gz)")
    p.add_argument("--manifest-only", action="store_true", help="only write results/MANIFEST.sha256")


def _add_natural_rate(sub) -> None:
    p = sub.add_parser(
        "natural-rate",
        help="per target class, the ASR a trigger already scores on a (clean) model",
        description="Apply a trigger to the test images of a prepared dataset and report, for every "
        "class, the share of non-class images the model assigns to it: the ASR a backdoor with that "
        "target keeps once purified back to this model's behaviour.",
    )
    p.add_argument("model", help="qcbench model file (safetensors with its model.json)")
    p.add_argument("--data", required=True, help="prepared dataset (resources/data/<dataset>/data.safetensors)")
    p.add_argument("--trigger", required=True, type=_json_arg, help="trigger spec, JSON or a JSON file")
    p.add_argument("--test-images", type=int, default=None, help="the eval.test_images subset (default: all)")
    p.add_argument("--threads", type=int, default=1)


def _add_purify(sub) -> None:
    p = sub.add_parser(
        "purify",
        help="quantize a received FP checkpoint and purify it (LAC+PDA or EFRAP) on unlabeled images",
        description="Quantize a third-party full-precision safetensors checkpoint and remove a "
        "quantization-conditioned backdoor with a layer-wise defense, using unlabeled images only. "
        "Every input is checked before any work; nothing is written to --out unless the run succeeds.",
    )
    p.add_argument("checkpoint", help="FP model, safetensors (a qcbench model.json beside it is read if present)")
    p.add_argument("--images", required=True, help="folder of png/jpg images, or a safetensors/.npy tensor file")
    p.add_argument("--out", required=True, help="output folder (model.safetensors, model.json, summary.json)")
    p.add_argument("--arch", help="registered architecture (qcbench list)")
    p.add_argument("--arch-kwargs", type=_json_arg, help="architecture keywords as JSON, e.g. '{\"width\": 16}'")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-channels", type=int)
    p.add_argument("--mean", type=float, nargs="+", help="per-channel normalization mean of the model's input")
    p.add_argument("--std", type=float, nargs="+", help="per-channel normalization std")
    p.add_argument("--bits", type=int, default=4, help="weight/activation bit width (default 4)")
    p.add_argument("--scheme", help="registered scheme family (default: --deploy's; mqbench_academic for simulated)")
    p.add_argument("--defense", default="lac", help="lac (LAC+PDA, default) or efrap")
    p.add_argument("--iterations", type=int, help="optimisation steps per layer unit (default 300 on CPU)")
    p.add_argument("--params", type=_json_arg, help="further defense keywords as JSON (or a JSON file)")
    p.add_argument("--max-images", type=int, default=1024, help="use at most this many images (default 1024)")
    p.add_argument("--labeled", help="labeled test data: prepared dataset or tensor file with x and y")
    p.add_argument("--trigger", type=_json_arg, help='trigger spec, JSON or a JSON file, e.g. \'{"name": "patch"}\'')
    p.add_argument("--target", type=int, help="the backdoor's target class")
    p.add_argument(
        "--triggered",
        help="already-triggered images with their true labels, for ASR (a tensor file with x and y, "
        "or an image folder with labels.txt); instead of --trigger",
    )
    p.add_argument("--export", help="onnx: also write model.onnx, the exact quantizer as an ONNX QDQ graph")
    p.add_argument(
        "--deploy",
        default="simulated",
        help="where the model will run, simulated (default) or onnxruntime: picks that runtime's scheme (and export)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when available, else CPU; the default), cpu, cuda or cuda:N"
    )
    p.add_argument("--threads", type=int, help="torch CPU threads, > 0 (default: torch's choice)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qcbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    lister = sub.add_parser(
        "list", help="list registered datasets, models, schemes, triggers, attacks, defenses, backends, tables"
    )
    lister.add_argument(
        "--defaults", action="store_true", help="print every attack's and defense's config keys with their defaults"
    )
    check = sub.add_parser(
        "check-config",
        help="validate the configuration the workflow would run with",
        description="Validate config/config.yaml (the paper config) with the given files layered on it "
        "left to right, as `snakemake --configfile FILE ...` does; with no file, the local default "
        "(config/config.yaml + config/local.yaml).",
    )
    check.add_argument("configs", nargs="*", help="overlays, as given to --configfile")
    check.add_argument("--workdir", default=".", help="folder relative data paths are resolved from")
    _add_purify(sub)
    _add_natural_rate(sub)
    _add_archive(sub)
    _add_fabricate(sub)
    _add_costs(sub)
    _add_sections(sub)
    args = parser.parse_args(argv)
    commands = {
        "list": _list,
        "check-config": _check,
        "purify": _purify,
        "natural-rate": _natural_rate,
        "archive": _archive,
        "fabricate": _fabricate,
        "costs": _costs,
        "sections": _sections,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
