"""Reliability: training that survives kills, bad files and more than one process. See benchmarks/README.md."""
