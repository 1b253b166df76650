"""What ``score.method: auto`` would pick, per split, and what the pick is worth on test users.

    python -m benchmarks.selection --valid VALID.json --test TEST.json

``VALID.json`` holds ``benchmarks.cold_start`` records run with ``--users valid`` (per-user
validation values of the selected models), ``TEST.json`` the same methods, splits and seeds on
the test users. For every (beta, seed) both rules are applied to the validation values: the
highest mean, and the product's rule (:func:`pipeline.recs.trained.simplest_within_noise`);
the table gives each pick's test NDCG@10, and per beta the mean over seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipeline.recs import trained

METRIC = trained.SELECT_METRIC


def _values(records: list[dict]) -> dict[tuple, dict[str, np.ndarray]]:
    """Per (beta, seed): each method's per-user values, on the users every method has."""
    out: dict[tuple, dict[str, dict]] = {}
    for r in records:
        per_user = r.get("per_user") or {}
        out.setdefault((r["beta"], r["seed"]), {})[r["method"]] = dict(
            zip(per_user.get("user_id", []), per_user.get(METRIC, []), strict=True)
        )
    aligned = {}
    for key, methods in out.items():
        users = sorted(set.intersection(*(set(v) for v in methods.values())))
        aligned[key] = {m: np.array([v[u] for u in users]) for m, v in methods.items()}
    return aligned


def rows(valid: list[dict], test: list[dict]) -> list[dict]:
    test_value = {(r["beta"], r["seed"], r["method"]): r[METRIC] for r in test}
    out = []
    for (beta, seed), values in sorted(_values(valid).items()):
        missing = [m for m in values if (beta, seed, m) not in test_value]
        if missing:
            raise SystemExit(f"the test records have no {missing} at beta {beta}, seed {seed}")
        highest = max(values, key=lambda m: values[m].mean())
        rule, info = trained.simplest_within_noise(values)
        out.append(
            {
                "beta": beta,
                "seed": seed,
                "highest": highest,
                "highest_test": test_value[(beta, seed, highest)],
                "rule": rule,
                "rule_p": info["p"],
                "rule_test": test_value[(beta, seed, rule)],
            }
        )
    return out


def table(rows: list[dict]) -> str:
    lines = [
        f"| beta | seed | highest valid {METRIC} | its test {METRIC} | auto's rule "
        f"(p) | its test {METRIC} |",
        "|---|---|---|---:|---|---:|",
    ]
    for r in rows:
        p = "" if r["rule_p"] is None else f" ({r['rule_p']:.2f})"
        lines.append(
            f"| {r['beta']} | {r['seed']} | {r['highest']} | {r['highest_test']:.4f} | "
            f"{r['rule']}{p} | {r['rule_test']:.4f} |"
        )
    for beta in sorted({r["beta"] for r in rows}):
        sub = [r for r in rows if r["beta"] == beta]
        hi = np.mean([r["highest_test"] for r in sub])
        ru = np.mean([r["rule_test"] for r in sub])
        lines.append(f"| {beta} | mean | | {hi:.4f} | | {ru:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--valid", type=Path, required=True, help="records run with --users valid")
    p.add_argument("--test", type=Path, required=True, help="the same runs on the test users")
    args = p.parse_args(argv)
    print(table(rows(json.loads(args.valid.read_text()), json.loads(args.test.read_text()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
