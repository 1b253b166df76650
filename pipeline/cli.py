"""What every stage shares at its entry point: argument parsing, logging, error reporting."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence

import yaml

from pipeline.config import Params, load_params
from pipeline.errors import PipelineError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param this stage reads, e.g. -S section.key=3 (YAML value); repeatable",
    )
    return p


def params_from(args: argparse.Namespace, stage: str, reads: Sequence[str]) -> Params:
    """The params ``stage`` reads (its ``PARAMS``), from ``--params`` with the ``-S`` overrides;
    a read outside ``reads`` raises :class:`~pipeline.errors.UndeclaredParamError`."""
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise PipelineError(f"--set {item!r}: expected KEY=VALUE")
        key = key.strip()
        if not reads_key(reads, key):
            raise PipelineError(
                f"--set {key}: stage {stage} does not read it (it reads {', '.join(reads)})"
            )
        overrides[key] = yaml.safe_load(value)
    return load_params(args.params, overrides, reads, stage)


def reads_key(reads: Sequence[str], key: str) -> bool:
    """Whether a stage whose ``PARAMS`` are ``reads`` reads the dotted ``key`` (or under it)."""

    def within(key: str, prefix: str) -> bool:
        return key == prefix or key.startswith(prefix + ".")

    return any(within(key, read) or within(read, key) for read in reads)


def setup_logging() -> None:
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    # Model libraries are chatty at INFO; keep their warnings only.
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "transformers", "diffusers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(main: Callable[[Sequence[str] | None], object]) -> int:
    """Run a stage's ``main``; a :class:`PipelineError` prints one clear line, no traceback."""
    setup_logging()
    try:
        main(None)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a write outside the atomic helpers (a download, a journal): outputs stay as they were
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"error: no space left on the device{where}; free some space and run again",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted: outputs written so far are complete; re-run to resume", file=sys.stderr)
        return 130
    return 0
