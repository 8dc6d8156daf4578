"""Benchmarks that print figures: `python -m workbench.bench.speed`, `.conv`, `.data`."""
