"""Cross-domain cold-start recommendation: data assembly, methods, metrics and the harness.

Used by the ``train`` / ``evaluate`` / ``score`` stages and by ``benchmarks.cold_start``, so
the pipeline and the benchmark evaluate every method the same way on the same split.
"""
