"""Release gates: does a shipped demo (or the fast path) meet its target? See benchmarks/README.md."""
