"""Paired significance of one method against another, over the test users of the benchmark.

Each record of ``benchmarks.cold_start`` keeps its per-user values: every ranking metric per
test user with a positive (``per_user``) and, for rating methods, each test user's number of
ratings and sums of absolute and squared errors (``per_user_errors``). Two methods evaluated
on the same split saw the same users, so their difference is paired by user.

The statistic is the table's: the metric per split, then the mean over the splits (seeds) of a
beta. The paired bootstrap resamples users with replacement *within* each split (the same
draw for both methods), recomputes the statistic for both and takes the difference; the 95 %
interval is its 2.5 and 97.5 percentiles and the two-sided p-value twice the share of
replicates on the far side of zero. MAE and RMSE are recomputed from the resampled users' error
sums, so users with many ratings weigh as they do in the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RANKING = ("ndcg@10", "hit@10", "ndcg@20", "hit@20", "recall@10", "mrr@10")
LOWER_IS_BETTER = ("mae", "rmse")


def _per_user(record: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, values) of one record; for MAE/RMSE values are (n, 3) error sums."""
    if metric in LOWER_IS_BETTER:
        errors = record.get("per_user_errors")
        if errors is None:
            return np.zeros(0, str), np.zeros((0, 3))
        values = np.stack([errors["n"], errors["abs"], errors["sq"]], 1).astype(np.float64)
        return np.asarray(errors["user_id"]), values
    per_user = record.get("per_user") or {}
    return np.asarray(per_user.get("user_id", [])), np.asarray(per_user.get(metric, []), float)


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index in ``ids`` of each of ``wanted`` (all present)."""
    order = np.argsort(ids)
    return order[np.searchsorted(ids[order], wanted)]


def _statistic(metric: str, values: np.ndarray, weights: np.ndarray) -> float:
    """The metric of a (weighted) sample of users: ``weights`` counts each user's draws."""
    if metric in LOWER_IS_BETTER:
        sums = weights @ values
        if metric == "mae":
            return float(sums[1] / max(sums[0], 1e-12))
        return float(np.sqrt(sums[2] / max(sums[0], 1e-12)))
    return float(weights @ values / max(weights.sum(), 1e-12))


def paired_bootstrap(
    records: list[dict],
    beta: float,
    method: str,
    other: str,
    metric: str,
    replicates: int = 2000,
    seed: int = 0,
) -> dict | None:
    """Difference ``method - other`` of ``metric`` at ``beta`` (mean over the splits both were
    run on), its bootstrap 95 % interval and two-sided p-value; None without per-user values."""
    by_split: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if r["beta"] == beta and r["method"] in (method, other):
            # a split is a seed, or a seed's half with `--users valid-halves`
            by_split.setdefault((r["seed"], r.get("half")), {})[r["method"]] = r
    splits = []
    for runs in by_split.values():
        if len(runs) < 2:
            continue
        ids_a, a = _per_user(runs[method], metric)
        ids_b, b = _per_user(runs[other], metric)
        common = np.intersect1d(ids_a, ids_b)
        if not len(common):
            continue
        a, b = a[_positions(ids_a, common)], b[_positions(ids_b, common)]
        splits.append((a, b))
    if not splits:
        return None
    rng = np.random.default_rng(seed)

    def diff(weights: list[np.ndarray]) -> float:
        return float(
            np.mean(
                [
                    _statistic(metric, a, w) - _statistic(metric, b, w)
                    for (a, b), w in zip(splits, weights, strict=True)
                ]
            )
        )

    observed = diff([np.ones(len(a)) for a, _ in splits])
    draws = np.empty(replicates)
    for i in range(replicates):
        weights = [
            np.bincount(rng.integers(0, len(a), len(a)), minlength=len(a)) for a, _ in splits
        ]
        draws[i] = diff([w.astype(np.float64) for w in weights])
    p = 2 * min((draws <= 0).mean(), (draws >= 0).mean())
    return {
        "difference": observed,
        "low": float(np.percentile(draws, 2.5)),
        "high": float(np.percentile(draws, 97.5)),
        "p": float(min(p, 1.0)),
        "splits": len(splits),
        "users": int(sum(len(a) for a, _ in splits)),
    }


def best_other(records: list[dict], beta: float, method: str, metric: str) -> str | None:
    """The best method by mean ``metric`` at ``beta`` other than ``method`` and its ablations."""
    means: dict[str, list[float]] = {}
    for r in records:
        name = r["method"]
        if r["beta"] != beta or name == method or name.startswith(f"{method}_"):
            continue
        if r.get(metric) is not None:
            means.setdefault(name, []).append(r[metric])
    if not means:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(means, key=lambda m: np.mean(means[m]))


def table(
    records: list[dict],
    method: str = "ours",
    metrics=("mae", "rmse", "ndcg@10", "hit@10"),
    against: str | None = None,
) -> str:
    """Markdown: per beta and metric, ``method`` against ``against`` (default: the best other
    method that is not one of its ablations), paired."""
    lines = [
        f"| beta | metric | {method} | {against or 'best other'} | difference (95 % CI) | p |",
        "|---|---|---:|---|---:|---:|",
    ]
    for beta in sorted({r["beta"] for r in records}):
        for metric in metrics:
            other = against or best_other(records, beta, method, metric)
            mine = [r[metric] for r in records if r["beta"] == beta and r["method"] == method]
            if other is None or not mine or mine[0] is None:
                continue
            test = paired_bootstrap(records, beta, method, other, metric)
            theirs = [r[metric] for r in records if r["beta"] == beta and r["method"] == other]
            if test is None:
                continue
            lines.append(
                f"| {beta} | {metric} | {np.mean(mine):.4f} | {other} {np.mean(theirs):.4f} | "
                f"{test['difference']:+.4f} ({test['low']:+.4f}, {test['high']:+.4f}) | "
                f"{test['p']:.3f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Paired bootstrap of one method against another.")
    p.add_argument("results", type=Path, nargs="+", help="JSON records of benchmarks.cold_start")
    p.add_argument("--method", default="ours")
    other = p.add_mutually_exclusive_group()
    other.add_argument("--against", help="the other method (default: the best other, per metric)")
    p.add_argument("--metrics", default="mae,rmse,ndcg@10,hit@10")
    other.add_argument(
        "--before",
        type=Path,
        help="records of an earlier run (say, the committed file before a change): --method is "
        "tested against itself there, paired by user, to measure what the change did",
    )
    args = p.parse_args(argv)
    records = [r for path in args.results for r in json.loads(path.read_text())]
    against = args.against
    if args.before is not None:
        against = f"{args.method} (before)"
        earlier = json.loads(args.before.read_text())
        records += [{**r, "method": against} for r in earlier if r["method"] == args.method]
    print(table(records, args.method, tuple(args.metrics.split(",")), against))


if __name__ == "__main__":
    main()
