"""Cold-start methods. Each one turns a cold user's source-domain information into scores
over the target items, expressed as :class:`Factors` (score = <user row, item row>), so that
evaluation and batch scoring are the same matrix product for every method.

Registry: :data:`METHODS` maps the benchmark's method names to classes.
"""

from __future__ import annotations

from pipeline.cdr.methods.base import Factors, FitContext, Method
from pipeline.cdr.methods.baselines import (
    GlobalMean,
    HabitBias,
    ItemMean,
    ItemMeanUserBias,
    Popularity,
    TargetMF,
)
from pipeline.cdr.methods.diffcdr import DiffCDR
from pipeline.cdr.methods.emcdr import EMCDR
from pipeline.cdr.methods.item_models import CDEase, CDItemKNN
from pipeline.cdr.methods.ours import ABLATIONS, Ours
from pipeline.cdr.methods.ptupcdr import PTUPCDR

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        GlobalMean,
        Popularity,
        ItemMean,
        ItemMeanUserBias,
        HabitBias,
        TargetMF,
        CDItemKNN,
        CDEase,
        EMCDR,
        PTUPCDR,
        DiffCDR,
        Ours,
        *ABLATIONS,
    )
}

__all__ = ["METHODS", "Factors", "FitContext", "Method"]
