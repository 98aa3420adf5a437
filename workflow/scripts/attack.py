from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
w = sm.wildcards
stages.run_attack(sm.config, w.attack, int(w.seed), sm.input.data, sm.input.clean, sm.output.model, sm.threads)
