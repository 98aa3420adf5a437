from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
w = sm.wildcards
stages.defend_fp(sm.config, w.defense, int(w.seed), sm.input.data, sm.input.fp, sm.output.model, sm.threads)
