"""Convert the CDRIB Toys / Video Games data into the cold-start benchmark's input files.

    python -m benchmarks.cdrib_to_inter [--data DIR] [--direction toys2games|games2toys] \\
        [--valid warm|cold-half] [--seeds 1,2,3] --out OUT

    python -m benchmarks.cold_start --source OUT/source.inter --target OUT/target.inter \\
        --splits-dir OUT/splits --betas <B printed by this script> --seeds 1,2,3 ...

Input (``DIR``, default ``../shared/data/cdrib-toys-videogames`` beside the repository):
``game_video/`` is the Toys_and_Games domain, ``video_game/`` the Video_Games domain, each
with ``train.txt``, ``valid.txt`` and ``test.txt`` (``user<TAB>item``, re-indexed ids).

Output (tab-separated, header ``user_id:token<TAB>item_id:token``, no rating: implicit):

- ``OUT/source.inter``: the source folder's ``train.txt`` rows. The other direction's cold
  users have no rows there (their source rows are that direction's held-out data), so they
  appear in the target only and the benchmark counts them as side users.
- ``OUT/target.inter``: every target row (``train.txt`` + ``valid.txt`` + ``test.txt``); the
  benchmark hides the cold users' rows from every model itself.
- ``OUT/splits/beta<B>_seed<S>/cold_users.txt`` and ``valid_users.txt`` for each seed.

Ids: users 0..2178 are the same people in both folders and keep one id, ``u<idx>``; users from
2179 up are different people in each folder and get a domain prefix (``toys_<idx>``,
``games_<idx>``); items are ``toys_i<idx>`` / ``games_i<idx>``.

Test and validation users. CDRIB's official cold users of the target domain (the users of the
target folder's ``valid.txt`` and ``test.txt``: no row in its ``train.txt``) are *not* split
into two user sets: nearly every one of them has items in both files (CDRIB validates and
tests on different items of the same users). The benchmark needs disjoint user sets, so:

- ``--valid warm`` (default): every official cold user is a test user (ground truth: all their
  target rows, ``valid.txt`` + ``test.txt``), the same users for every seed; the validation
  users are ``round(0.1 * overlap)`` warm overlapping users drawn with
  ``numpy.random.default_rng(seed)`` (as the benchmark itself would draw them), so their target
  rows are hidden too and the models train on fewer warm overlapping users than CDRIB's.
- ``--valid cold-half``: the official cold users are shuffled once (seed 0) and halved: the
  first half are test users, the second validation users, the same for every seed. Training
  users are exactly CDRIB's; the test set is half as large.

The split label ``B`` is the test users' share of the overlapping users (users in both
files), rounded to two decimals; the exact share is printed. Metrics of the benchmark are
full-ranking (every target item is a candidate), not CDRIB's 999 sampled negatives.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cdrib-toys-videogames"
N_OVERLAP = 2179  # user indices 0..2178 are the same person in both folders
DOMAINS = {"toys": "game_video", "games": "video_game"}
DIRECTIONS = {"toys2games": ("toys", "games"), "games2toys": ("games", "toys")}
HEADER = "user_id:token\titem_id:token\n"


def read_pairs(path: Path) -> np.ndarray:
    """(n, 2) int array of (user, item) from a CDRIB ``user<TAB>item[...]`` file."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 2:
            raise SystemExit(f"{path}:{number}: expected 'user<TAB>item', got {line!r}")
        rows.append((int(fields[0]), int(fields[1])))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def user_id(idx: int, domain: str) -> str:
    return f"u{idx}" if idx < N_OVERLAP else f"{domain}_{idx}"


def write_inter(path: Path, pairs: np.ndarray, domain: str) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write(HEADER)
        for u, i in pairs.tolist():
            out.write(f"{user_id(u, domain)}\t{domain}_i{i}\n")


def write_users(path: Path, users: list[str]) -> None:
    path.write_text("".join(f"{u}\n" for u in users), encoding="utf-8")


def convert(data: Path, direction: str, valid_mode: str, seeds: list[int], out: Path) -> dict:
    src_dom, tgt_dom = DIRECTIONS[direction]
    src_dir, tgt_dir = data / DOMAINS[src_dom], data / DOMAINS[tgt_dom]
    src_train = read_pairs(src_dir / "train.txt")
    src_heldout = np.concatenate(
        [read_pairs(src_dir / "valid.txt"), read_pairs(src_dir / "test.txt")]
    )
    tgt_train = read_pairs(tgt_dir / "train.txt")
    tgt_valid = read_pairs(tgt_dir / "valid.txt")
    tgt_test = read_pairs(tgt_dir / "test.txt")
    target = np.concatenate([tgt_train, tgt_valid, tgt_test])

    # Official cold users of the target domain: no target train rows, warm in the source.
    cold = sorted(set(tgt_valid[:, 0].tolist()) | set(tgt_test[:, 0].tolist()))
    in_tgt_train = set(tgt_train[:, 0].tolist())
    leaked = [u for u in cold if u in in_tgt_train]
    if leaked:
        raise SystemExit(f"{len(leaked)} official cold users have rows in {tgt_dir}/train.txt")
    if any(u >= N_OVERLAP for u in cold):
        raise SystemExit("an official cold user is not an overlapping user (index >= 2179)")
    src_users = set(src_train[:, 0].tolist())
    no_source = [u for u in cold if u not in src_users]
    if no_source:
        # They cannot be cold-start users of this direction (nothing to transfer from).
        print(f"warning: {len(no_source)} official cold users have no source train rows; dropped")
        cold = [u for u in cold if u in src_users]
    pair_dups = len(target) - len({(u, i) for u, i in target.tolist()})

    out.mkdir(parents=True, exist_ok=True)
    write_inter(out / "source.inter", src_train, src_dom)
    write_inter(out / "target.inter", target, tgt_dom)

    # The benchmark's view: ids in both files are the overlapping users.
    src_ids = {user_id(u, src_dom) for u in src_users}
    tgt_ids = {user_id(u, tgt_dom) for u in set(target[:, 0].tolist())}
    overlap = sorted(src_ids & tgt_ids)
    cold_ids = [user_id(u, tgt_dom) for u in cold]
    warm = sorted(set(overlap) - set(cold_ids))
    both = len(set(tgt_valid[:, 0].tolist()) & set(tgt_test[:, 0].tolist()))
    if valid_mode == "cold-half":
        order = np.random.default_rng(0).permutation(len(cold_ids))
        half = (len(cold_ids) + 1) // 2
        test_ids = sorted(cold_ids[i] for i in order[:half])
        valid_fixed = sorted(cold_ids[i] for i in order[half:])
    else:
        test_ids, valid_fixed = cold_ids, None
    beta = round(len(test_ids) / len(overlap), 2)
    splits = out / "splits"
    valid_sizes = []
    for seed in seeds:
        folder = splits / f"beta{float(beta)}_seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        if valid_fixed is None:
            n_valid = round(0.1 * len(overlap))
            valid = sorted(
                warm[i] for i in np.random.default_rng(seed).permutation(len(warm))[:n_valid]
            )
        else:
            valid = valid_fixed
        write_users(folder / "cold_users.txt", test_ids)
        write_users(folder / "valid_users.txt", valid)
        valid_sizes.append(len(valid))

    reverse_cold = {u for u in src_heldout[:, 0].tolist() if u < N_OVERLAP} - src_users
    side_ids = tgt_ids - src_ids
    n_side_specific = sum(not s.startswith("u") for s in side_ids)
    cold_rows = np.isin(target[:, 0], cold)
    summary = {
        "direction": f"{src_dom} ({src_dir.name}) -> {tgt_dom} ({tgt_dir.name})",
        "source rows (train.txt)": len(src_train),
        "source users / items": f"{len(src_users)} / {len(set(src_train[:, 1].tolist()))}",
        "target rows (train+valid+test)": (
            f"{len(target)} = {len(tgt_train)} + {len(tgt_valid)} + {len(tgt_test)}"
        ),
        "target users / items": f"{len(tgt_ids)} / {len(set(target[:, 1].tolist()))}",
        "duplicate (user, item) target rows": pair_dups,
        "overlapping users (in both files)": len(overlap),
        "official cold users (target valid+test users)": (
            f"{len(cold)} ({both} in both valid.txt and test.txt)"
        ),
        "their target rows (held out)": int(cold_rows.sum()),
        "their source rows": int(np.isin(src_train[:, 0], cold).sum()),
        "test users (cold_users.txt)": len(test_ids),
        "valid users (valid_users.txt)": f"{valid_sizes[0]} ({valid_mode})",
        "warm overlapping users left to train": (
            len(warm) - (valid_sizes[0] if valid_fixed is None else 0)
        ),
        "side users (target only)": f"{len(side_ids)} = {n_side_specific} {tgt_dom}-only + "
        f"{len(side_ids) - n_side_specific} reverse-direction cold users",
        "reverse-direction cold users (no source train rows)": len(reverse_cold),
        "source-only users": len(src_ids - tgt_ids),
        "test share of overlap": f"{len(test_ids) / len(overlap):.4f} -> label beta{float(beta)}",
        "splits": f"{splits}/beta{float(beta)}_seed{{{','.join(map(str, seeds))}}}",
    }
    return {"beta": beta, "summary": summary}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="the cdrib-toys-videogames folder"
    )
    p.add_argument("--direction", choices=sorted(DIRECTIONS), default="toys2games")
    p.add_argument(
        "--valid",
        choices=("warm", "cold-half"),
        default="warm",
        help="where validation users come from",
    )
    p.add_argument("--seeds", default="1,2,3", help="comma-separated split seeds")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    result = convert(args.data, args.direction, args.valid, seeds, args.out)
    width = max(map(len, result["summary"]))
    for key, value in result["summary"].items():
        print(f"{key:<{width}}  {value}")
    print(f"\nbenchmark: --betas {result['beta']} --seeds {args.seeds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
