"""Stage ``evaluate``: cold-start metrics of every trained method on the same split.

Test metrics of the selected models (``metrics/cold_start.json``, one entry per method:
``mae``, ``rmse``, ``ndcg@10``, ``hit@10``, ``recall@10``, ``mrr@10`` and the same at 20),
the validation metrics they were selected on (``metrics/cold_start_valid.json``), each
method's NDCG@10 per validation user (``data/evaluation/valid_users.parquet``, what
``score.method: auto`` compares methods on), and DVC
plot data: ``plots/methods.csv`` (metric by method) and ``plots/sampling_steps.csv`` (the
generator's metrics by number of sampling steps, on validation users). None of them holds a
timing, so a retrain with the same seed leaves them as they were (training seconds are in
``metrics/train.json``, scoring seconds in the log).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence

from pipeline import cli, paths
from pipeline.cdr import harness
from pipeline.config import Params
from pipeline.io import write_json, write_text
from pipeline.recs import trained
from pipeline.recs.metrics import METRIC_KEYS

log = logging.getLogger("evaluate")
PARAMS = ("pair", "train")  # read here; dvc.yaml lists the same

# plots/methods.csv: every metric but recall@20 and mrr@20 (those are in cold_start.json)
PLOT_COLUMNS = ("method", *METRIC_KEYS[:8])
STEPS_COLUMNS = ("method", "steps", "rmse", "mae", "ndcg@10", "hit@10")


TIMINGS = ("train_seconds", "infer_seconds")


def _round(row: dict) -> dict:
    return {
        k: (round(v, 6) if isinstance(v, float) else v)
        for k, v in row.items()
        if k not in ("info", "per_user", "per_user_errors") and k not in TIMINGS
    }


def _csv(rows: list[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def evaluate(params: Params) -> dict:
    data, fitted = trained.load(params)
    test = harness.evaluate(fitted, "test")
    valid = harness.evaluate(fitted, "valid", per_user=True)
    write_json({m: _round(r) for m, r in test.items()}, paths.COLD_START)
    write_json({m: _round(r) for m, r in valid.items()}, paths.VALID)
    users = {m: r["per_user"] for m, r in valid.items()}
    by_method = {m: (u["user_id"], u[trained.SELECT_METRIC]) for m, u in users.items()}
    trained.write_valid_values(by_method, paths.VALID_USERS)
    rows = [{"method": m, **_round(r)} for m, r in test.items()]
    write_text(_csv(rows, PLOT_COLUMNS), paths.PLOTS / "methods.csv")
    steps_rows = harness.sampling_steps_curve(fitted, "valid")
    write_text(
        _csv(steps_rows, STEPS_COLUMNS),
        paths.PLOTS / "sampling_steps.csv",
    )
    log.info("test metrics on %d cold users:", len(data.cold_users("test")))
    for name, row in test.items():
        log.info("%s  scored in %.2f s", harness.summary_line(name, row), row["infer_seconds"])
    log.info(
        "wrote %s, %s, %s and %s", paths.COLD_START, paths.VALID, paths.VALID_USERS, paths.PLOTS
    )
    return test


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return evaluate(cli.params_from(args, "evaluate", PARAMS))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
