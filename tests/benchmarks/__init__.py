"""qcbench's benchmark suite (``make bench``; not collected by pytest: no ``test_*`` files here).

``python -m tests.benchmarks --run DIR`` measures, in one run on this machine, the training loop vs a
plain PyTorch loop, the simulated quantized forward vs the FP forward, early-stopped vs fixed LAC+PDA
on one cell of the finished run in DIR, per-stage totals of DIR's local-default run, the planning
time of the paper config and the threads-per-job choice, and writes
``results/benchmarks/summary.json`` (keys: README, "Benchmarks").
"""
