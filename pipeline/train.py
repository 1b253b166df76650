"""Stage ``train``: base models and every cold-start method for the (source, target) pair.

Fits the per-domain base models (biased MF and BPR), then each method in ``train.methods``,
with every selection (epochs, guidance scale, blend weights) made on the ``valid_cold`` users
only. Writes ``data/models/`` (see :mod:`pipeline.cdr.store`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pipeline import cli, cpu, paths
from pipeline.cdr import data as cdr_data
from pipeline.cdr import features, harness, store
from pipeline.config import Params
from pipeline.io import write_json

log = logging.getLogger("train")
PARAMS = ("dataset.name", "pair", "train")  # read here; dvc.yaml lists the same


def train(params: Params) -> harness.Fitted:
    pair = params.pair
    data = cdr_data.load(paths.INTERACTIONS, paths.ROLES, pair.source, pair.target)
    log.info(
        "%s -> %s: %d users (%d train overlap, %d side, %d valid cold, %d test cold), %d / %d items, %s",
        pair.source,
        pair.target,
        data.n_users,
        len(data.users("train_overlap")),
        len(data.users("side")),
        len(data.users("valid_cold")),
        len(data.users("test_cold")),
        data.n_src_items,
        data.n_tgt_items,
        "explicit ratings" if data.explicit else "implicit feedback",
    )
    tp = params.train
    extra = features.condition_extra(
        data, tp, pair.source, paths.USER_PROFILES, paths.ITEM_FEATURES
    )
    with cpu.Job("train"):  # counted by the other CPU-heavy jobs on this machine
        fitted = harness.fit(data, tp.methods, tp.method_configs(), tp.base, tp.seed, extra)
    meta = {
        "dataset": params.dataset.name,
        "source": pair.source,
        "target": pair.target,
        "seed": tp.seed,
        "params_hash": store.params_hash(tp),
        "train_params": tp.model_dump(mode="json"),  # to name what changed, at load
    }
    store.save(fitted, paths.MODELS, meta)
    write_json(store.timings(fitted), paths.TRAIN_TIMES)
    log.info("wrote %s (%s)", paths.MODELS, ", ".join(fitted.methods))
    return fitted


def main(argv: Sequence[str] | None = None) -> harness.Fitted:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return train(cli.params_from(args, "train", PARAMS))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
