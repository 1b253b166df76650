"""params.yaml validation: a bad key or value is named before any work starts."""

from __future__ import annotations

import pytest

from pipeline.config import load_params
from pipeline.errors import ParamsError
from tests.conftest import ROOT, write_params


def test_repository_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.dataset.format == "synthetic"
    assert (params.pair.source, params.pair.target) == ("books", "movies")


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = write_params(tmp_path / "params.yaml", split={"test_fracton": 0.3})
    with pytest.raises(
        ParamsError, match=r"split\.test_fracton: unknown key \(did you mean 'test_fraction'\?\)"
    ):
        load_params(path)


def test_bad_value_is_named(tmp_path):
    path = write_params(tmp_path / "params.yaml", split={"test_fraction": 1.5})
    with pytest.raises(ParamsError, match=r"split\.test_fraction: .*less than 1"):
        load_params(path)


def test_pair_must_name_configured_domains(tmp_path):
    path = write_params(tmp_path / "params.yaml", pair={"target": "music"})
    with pytest.raises(ParamsError, match=r"pair\.target: 'music' is not a domain"):
        load_params(path)


def test_recbole_domains_need_files(tmp_path):
    path = write_params(
        tmp_path / "params.yaml",
        dataset={
            "name": "x",
            "format": "recbole",
            "domains": {"books": {"inter": "a.inter"}, "movies": {}},
        },
    )
    with pytest.raises(ParamsError, match=r"domains\.movies\.inter: required for format recbole"):
        load_params(path)


def test_overrides_use_dotted_keys(tmp_path):
    params = load_params(ROOT / "params.yaml", {"split.seed": 11})
    assert params.split.seed == 11
