"""The benchmarks: scripts that measure dff, grouped by the question they answer (benchmarks/README.md).

    gates/        release gates: does a shipped demo or the fast path meet its target?
    speed/        how fast, on this machine or a GPU, and which speed option pays
    studies/      which recipe, sampler, objective or network, measured against the alternatives
    reliability/  does training survive kills, bad files and more than one process?

Shared helpers are in benchmarks/common.py; committed results in benchmarks/results/.
"""
