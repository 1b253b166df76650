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

import numpy as np
import polars as pl

from pipeline import cli, paths
from pipeline.config import Params
from pipeline.config.split import SplitParams
from pipeline.errors import InputError
from pipeline.io import read_parquet, write_json, write_parquet
from pipeline.schemas import ROLES, SPLIT

log = logging.getLogger("split")
PARAMS = ("pair", "split")  # read here; dvc.yaml lists the same


def read_user_file(path: str | Path, known: set[str], what: str) -> list[str]:
    """User ids from a text file (one per line, blank lines and ``#`` comments ignored)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found", path=path)
    users, seen = [], set()
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        user = raw.strip()
        if not user or user.startswith("#"):
            continue
        if user not in known:
            raise InputError(
                f"user '{user}' is not an overlapping user of this pair (it must have history in "
                "both the source and the target domain)",
                path=path,
                line=number,
                field="user_id",
            )
        if user not in seen:
            users.append(user)
            seen.add(user)
    return users


def assign_roles(
    source_users: set[str], target_users: set[str], params: SplitParams
) -> dict[str, str]:
    """user_id -> role; deterministic from ``params.seed`` and the id sets alone."""
    overlap = sorted(source_users & target_users)
    rng = np.random.default_rng(params.seed)
    if params.test_users_file:
        test = read_user_file(params.test_users_file, set(overlap), "split.test_users_file")
        test_set = set(test)
        rest = [u for u in overlap if u not in test_set]
    else:
        n_test = round(params.test_fraction * len(overlap))
        order = rng.permutation(len(overlap))
        test = [overlap[i] for i in order[:n_test]]
        rest = sorted(overlap[i] for i in order[n_test:])
    if params.valid_users_file:
        valid = read_user_file(params.valid_users_file, set(rest), "split.valid_users_file")
    else:
        n_valid = round(params.valid_fraction * len(overlap))
        valid = [rest[i] for i in rng.permutation(len(rest))[:n_valid]]
    roles = dict.fromkeys(source_users - target_users, "source_only")
    roles.update(dict.fromkeys(target_users - source_users, "side"))
    roles.update(dict.fromkeys(overlap, "train_overlap"))
    roles.update(dict.fromkeys(valid, "valid_cold"))
    roles.update(dict.fromkeys(test, "test_cold"))
    return roles


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
