"""Cold-start roles of a (source, target) pair: which overlapping users are held out as test
and validation users (the ``split`` stage, and the benchmark's pinned splits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config.split import SplitParams
from pipeline.errors import InputError
from pipeline.io import read_id_lines


def read_user_file(path: str | Path, known: set[str], what: str) -> list[str]:
    """User ids from a text file (one per line, blank lines and ``#`` comments ignored)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found", path=path)
    users, seen = [], set()
    for number, user in read_id_lines(path):
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
