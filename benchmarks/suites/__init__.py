"""Benchmark suites: each public module defines `run(ctx) -> list[Measurement]`."""
