from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
stages.render_figure(
    sm.wildcards.figure,
    inputs={k: sm.input[k] for k in sm.input.keys()},
    outputs={"png": sm.output.png, "pdf": sm.output.pdf, "json": sm.output.json},
    config=sm.params.config,
    threads=sm.threads,
)
