"""Benchmarks: printed tables with the reference measured in the same run."""
