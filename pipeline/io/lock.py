"""One writer at a time per output directory: an advisory lock on the directory itself."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError


@contextlib.contextmanager
def locked(directory: str | Path, holder: str = "another run") -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (created if missing) for the block.

    A second process asking for it fails at once with a :class:`PipelineError` naming the
    directory and ``holder``, rather than waiting. The lock goes with the process: a killed
    run never leaves it behind.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PipelineError(f"{directory}: exists and is not a directory") from None
    except OSError as exc:
        raise PipelineError(f"{directory}: cannot be created ({exc.strerror})") from None
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(f"{directory}: {holder} holds it; wait for it") from None
        yield
    finally:
        os.close(fd)
