"""Studies: recipes, samplers, objectives, networks and autoencoders measured against the alternatives. See
benchmarks/README.md."""
