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

from pipeline import cli, paths
from pipeline.config import Params
from pipeline.errors import InputError
from pipeline.io import read_parquet, write_json, write_parquet
from pipeline.schemas import ROLES, SPLIT
from pipeline.tables.roles import assign_roles

log = logging.getLogger("split")
PARAMS = ("pair", "split")  # read here; dvc.yaml lists the same


def split(params: Params, users_path: Path = paths.USERS, out: Path = paths.ROLES) -> dict:
    source, target = params.pair.source, params.pair.target
    users = read_parquet(users_path, columns=["user_id", "domain", "n_interactions"])
    counts = {
        d: dict(users.filter(pl.col("domain") == d).select("user_id", "n_interactions").iter_rows())
        for d in (source, target)
    }
    for role, domain in (("source", source), ("target", target)):
        if not counts[domain]:
            raise InputError(
                f"pair.{role} '{domain}' has no users in the prepared data", path=users_path
            )
    overlap = counts[source].keys() & counts[target].keys()
    if not overlap:
        raise InputError(
            f"domains '{source}' and '{target}' share no user: cross-domain transfer needs users "
            "with history in both (pick another pair)",
            path=users_path,
            field="user_id",
        )
    roles = assign_roles(set(counts[source]), set(counts[target]), params.split)
    n_train = sum(r == "train_overlap" for r in roles.values())
    if n_train == 0:
        raise InputError(
            f"no training users are left among the {len(overlap)} overlapping users: lower "
            "split.test_fraction / split.valid_fraction",
            path=users_path,
        )
    ids = sorted(roles)
    table = pl.DataFrame(
        {
            "user_id": ids,
            "role": [roles[u] for u in ids],
            "n_source": [counts[source].get(u, 0) for u in ids],
            "n_target": [counts[target].get(u, 0) for u in ids],
        }
    )
    summary = {
        "source": source,
        "target": target,
        "seed": params.split.seed,
        "test_users_file": params.split.test_users_file,
        "users": {r: sum(v == r for v in roles.values()) for r in ROLES},
    }
    write_parquet(table, out, summary, schema=SPLIT)
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
