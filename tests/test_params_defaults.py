"""params.yaml and the code agree: every value params.yaml sets for a key with a code default
is that default (defaults live in the config models; params.yaml shows them to users), and
params.yaml holds no key the code does not know."""

from __future__ import annotations

import importlib

import pytest
import yaml

from pipeline.config import SECTIONS
from tests.conftest import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
# The embedded default's own choices, not library defaults: which data, and a pinned scoring
# date so that `dvc repro` writes the same partition every time (the code's default is today).
DATA_CHOICES = {"dataset"}
PINNED = {"score.date"}


def model(section: str):
    module, _, name = SECTIONS[section].partition(":")
    return getattr(importlib.import_module(module), name)


def differences(yaml_value, code_value, path: str) -> list[str]:
    if isinstance(yaml_value, dict) and isinstance(code_value, dict):
        out = []
        for key, value in yaml_value.items():
            if key not in code_value:
                out.append(f"{path}.{key}: not a key of the code")
            else:
                out += differences(value, code_value[key], f"{path}.{key}")
        return out
    if path in PINNED or yaml_value == code_value:
        return []
    return [f"{path}: {yaml_value!r} != {code_value!r}"]


@pytest.mark.parametrize("section", sorted(set(PARAMS) - DATA_CHOICES))
def test_params_yaml_shows_the_code_defaults(section):
    cls = model(section)
    required = [n for n, f in cls.model_fields.items() if f.is_required()]
    assert not required, f"{section}: {required} have no default in the code"
    defaults = cls().model_dump(mode="json")
    assert differences(PARAMS[section], defaults, section) == []


def test_every_section_of_params_yaml_has_a_model():
    assert set(PARAMS) <= set(SECTIONS)
