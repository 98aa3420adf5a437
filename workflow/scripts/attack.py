from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
w = sm.wildcards
init = sm.input.get("init")  # absent for attacks that start from scratch
stages.run_attack(sm.config, w.attack, w.dataset, w.arch, int(w.seed), sm.input.data, init, sm.output.model, sm.threads)
