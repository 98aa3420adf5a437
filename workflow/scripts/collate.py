from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
stages.collate(list(sm.input), sm.output[0], no_defense=sm.params.no_defense)
