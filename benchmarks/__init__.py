"""ciliumlite benchmarks: run with `python benchmarks/run.py` (see benchmarks/README.md)."""
