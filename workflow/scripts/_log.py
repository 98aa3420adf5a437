"""Shared by the rule scripts: send stderr (progress bars, tracebacks) to the rule's log."""

import sys


def to_log(snakemake) -> None:
    if snakemake.log:
        sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: SIM115
