from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
stages.render_table(sm.wildcards.table, sm.input[0], sm.output.md, sm.output.tex, defenses=sm.params.defenses)
