"""Stage ``split``: give every user of the (source, target) pair exactly one role.

Roles (``data/split/roles.parquet``, one row per user, sorted by ``user_id``):

- ``train_overlap``: in both domains; their target history trains the models.
- ``valid_cold`` / ``test_cold``: in both domains, but their target history is hidden from
  every model; validation users select models, test users are reported.
- ``side``: target domain only (MuSiC's side users: they show the target distribution).
- ``source_only``: source domain only.

Overlapping users are sorted by id and shuffled with ``numpy.random.default_rng(split.seed)``:
the result depends on the seed alone, never on Python's hash seed or on input row order.
``split.test_users_file`` (one user id per line) pins the test users instead; validation users
then come from the remaining overlapping users.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa

from pipeline import cli, paths
from pipeline.config import Params
from pipeline.errors import InputError
from pipeline.io import ParquetPartWriter, read_parquet, unreadable, write_json
from pipeline.schemas import ROLES, SPLIT
from pipeline.tables.roles import (
    ROLE_CODES,
    TEST,
    TRAIN,
    VALID,
    cold_codes,
    role_ranges,
    survey_pair,
)

log = logging.getLogger("split")
PARAMS = ("pair", "split")  # read here; dvc.yaml lists the same


def split(params: Params, users_path: Path = paths.USERS, out: Path = paths.ROLES) -> dict:
    source, target = params.pair.source, params.pair.target
    # Read here whole only to check the file; then a range of users at a time.
    read_parquet(users_path, columns=["n_interactions"])
    try:
        pair = survey_pair(users_path, source, target)
    except (pl.exceptions.PolarsError, pa.ArrowException) as exc:
        raise unreadable(users_path, exc, "run the stage that writes it again") from None
    for role, n, domain in (("source", pair.n_source, source), ("target", pair.n_target, target)):
        if not n:
            raise InputError(
                f"pair.{role} '{domain}' has no users in the prepared data", path=users_path
            )
    n_overlap = len(pair.overlap)
    if not n_overlap:
        raise InputError(
            f"domains '{source}' and '{target}' share no user: cross-domain transfer needs users "
            "with history in both (pick another pair)",
            path=users_path,
            field="user_id",
        )
    codes = cold_codes(pair, params.split)
    counts = {
        "source_only": pair.n_source - n_overlap,
        "side": pair.n_target - n_overlap,
        **{ROLE_CODES[c]: int((codes == c).sum()) for c in (TRAIN, VALID, TEST)},
    }
    if not counts["train_overlap"]:
        raise InputError(
            f"no training users are left among the {n_overlap} overlapping users: lower "
            "split.test_fraction / split.valid_fraction",
            path=users_path,
        )
    summary = {
        "source": source,
        "target": target,
        "seed": params.split.seed,
        "test_users_file": params.split.test_users_file,
        "users": {r: counts[r] for r in ROLES},
    }
    with ParquetPartWriter(out, SPLIT, summary) as writer:
        for table in role_ranges(users_path, pair, codes, source, target):
            writer.write(table.to_arrow())
    write_json(summary, paths.SPLIT_STATS)
    log.info(
        "%s -> %s: %s; wrote %s",
        source,
        target,
        ", ".join(f"{n} {r}" for r, n in summary["users"].items()),
        out,
    )
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return split(cli.params_from(args, "split", PARAMS))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
