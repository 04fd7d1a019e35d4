"""Speed: training, sampling and data-loading speed and memory, and which speed option pays. See
benchmarks/README.md."""
