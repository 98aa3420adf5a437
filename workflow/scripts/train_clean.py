from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
w = sm.wildcards
stages.train_clean(sm.config, w.dataset, w.arch, int(w.seed), sm.input.data, sm.output.model, sm.threads)
