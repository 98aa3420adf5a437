"""``qcbench`` command line: inspect the registries and check configuration files."""

from __future__ import annotations

import argparse
import sys


def _list(_args) -> int:
    from qcbench.attacks import ATTACKS
    from qcbench.data import DATASETS
    from qcbench.defenses import DEFENSES
    from qcbench.models import MODELS
    from qcbench.quant import SCHEMES
    from qcbench.triggers import TRIGGERS

    for reg in (DATASETS, MODELS, SCHEMES, TRIGGERS, ATTACKS, DEFENSES):
        print(f"{reg.kind + 's':22s} {', '.join(reg.names())}")
    return 0


def _check(args) -> int:
    from qcbench.config import ConfigError, check_config, load_config

    try:
        check_config(load_config(*args.configs), workdir=args.workdir)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print("configuration is valid")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qcbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list registered datasets, models, schemes, triggers, attacks, defenses")
    check = sub.add_parser("check-config", help="validate config files (layered left to right)")
    check.add_argument("configs", nargs="+")
    check.add_argument("--workdir", default=".", help="folder relative data paths are resolved from")
    args = parser.parse_args(argv)
    return {"list": _list, "check-config": _check}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
