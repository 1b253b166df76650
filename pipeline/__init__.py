"""Stage code of the cold-start cross-domain recommendation pipeline.

Each stage is one module with a ``main(argv=None)`` entry point, run by DVC as
``python -m pipeline.<stage>``. Shared pieces: :mod:`pipeline.config` (typed params),
:mod:`pipeline.io` (atomic Parquet/JSON writers, the one metadata reader),
:mod:`pipeline.errors` (bad-input reporting) and :mod:`pipeline.schemas` (table schemas).
"""
