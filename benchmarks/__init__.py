"""vidsel benchmarks: `python -m benchmarks.run` (what `make bench` runs)."""
