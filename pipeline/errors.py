"""Bad-input reporting: every message names the file, the line (or row) and the field.

Parsers report damaged records to a :class:`DamageLog`. Tolerable damage is skipped, counted and
summarised; past ``max_bad_fraction`` of a file's records the stage fails with
:class:`InputError`, quoting the first problems so the user can look at the exact lines.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class PipelineError(Exception):
    """An error the user can act on; stages print it without a traceback."""


class ParamsError(PipelineError):
    """A bad key or value in params.yaml."""


class UndeclaredParamError(Exception):
    """A stage read a param its ``PARAMS`` do not declare: a bug in the stage (dvc.yaml would
    not re-run it when that param changes), so it is not a :class:`PipelineError` and keeps
    its traceback."""


class InputError(PipelineError):
    """Bad input data, located as precisely as we can: file, line/row, field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ):
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = message
        super().__init__(format_location(self.path, line, field) + message)


def format_location(path: str | None, line: int | None, field: str | None) -> str:
    parts = []
    if path is not None:
        parts.append(path if line is None else f"{path}:{line}")
    elif line is not None:
        parts.append(f"line {line}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ": ".join(parts) + (": " if parts else "")


@dataclass
class DamageLog:
    """Counts skipped records of one file and decides when damage is no longer tolerable.

    ``max_bad_fraction`` is the share of a file's records that may be skipped; a file with
    fewer than ``min_records_for_fraction`` records may lose at most ``max_bad_fraction`` of
    that many (so three bad lines in a ten-line file still fail).
    """

    path: str
    max_bad_fraction: float = 0.001
    keep_examples: int = 5
    min_records_for_fraction: int = 1000
    total: int = 0
    bad: int = 0
    reasons: Counter | dict = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reasons = Counter(self.reasons)

    def ok(self) -> None:
        self.total += 1

    def skip(self, line: int, field_name: str | None, reason: str, kind: str) -> None:
        """Record one skipped record; ``kind`` is a short tag used for the counts."""
        self.total += 1
        self.bad += 1
        self.reasons[kind] += 1
        if len(self.examples) < self.keep_examples:
            self.examples.append(format_location(self.path, line, field_name) + reason)

    @property
    def allowed(self) -> int:
        return int(self.max_bad_fraction * max(self.total, self.min_records_for_fraction))

    def check(self) -> None:
        """Log a summary; raise :class:`InputError` when the damage is past the threshold."""
        if self.bad == 0:
            return
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items()))
        examples = "\n  ".join(self.examples)
        if self.bad > self.allowed:
            raise InputError(
                f"{self.bad} of {self.total} records are bad ({summary}), more than the "
                f"{self.allowed} that prepare.max_bad_fraction={self.max_bad_fraction} allows. "
                f"First problems:\n  {examples}",
                path=self.path,
            )
        log.warning(
            "%s: skipped %d of %d records (%s). First problems:\n  %s",
            self.path,
            self.bad,
            self.total,
            summary,
            examples,
        )

    def state(self) -> dict:
        """The counts, as keyword arguments that rebuild this log (cached parses keep them)."""
        return {
            "total": self.total,
            "bad": self.bad,
            "reasons": dict(self.reasons),
            "examples": list(self.examples),
        }
