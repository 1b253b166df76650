"""The cold-start benchmark gives `ours` the same condition inputs as the pipeline, less only
the ones that need files it was not given."""

from __future__ import annotations

from benchmarks.cold_start import condition_inputs
from pipeline.cdr.configs import TrainParams


def test_only_inputs_that_need_files_are_dropped():
    train = TrainParams()
    assert set(train.ours.condition) == {"liked_items", "profile", "habits"}
    kept, extra = condition_inputs(train, None, None, None)
    assert kept.ours.condition == ["habits"] and extra == {}
    assert train.ours.condition != kept.ours.condition  # the caller's params are not changed
