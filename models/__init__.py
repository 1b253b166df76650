"""Torch model code: networks and diffusion wrappers only, no file or network I/O.

Importable without :mod:`pipeline` (the pipeline imports models, never the reverse).
"""
