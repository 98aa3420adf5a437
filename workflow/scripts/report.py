from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
stages.render_report(sm.input.notebook, sm.params.results, sm.output.html, executed=sm.output.notebook)
