"""params.yaml validation: a bad key or value is named before any work starts."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
import torch

from pipeline.config import load_params
from pipeline.distributed import resolve_device
from pipeline.errors import ParamsError, PipelineError, UndeclaredParamError
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


def test_unknown_section_is_named_for_every_stage(tmp_path):
    path = write_params(tmp_path / "params.yaml", splitt={"seed": 1})
    with pytest.raises(ParamsError, match=r"splitt: unknown section \(did you mean 'split'\?\)"):
        load_params(path, reads=("dataset",), stage="download")


def test_a_stage_validates_only_the_sections_it_reads(tmp_path):
    path = write_params(tmp_path / "params.yaml", split={"test_fraction": 1.5})
    assert load_params(path, reads=("dataset",), stage="download").dataset.name == "synthetic"
    with pytest.raises(ParamsError, match=r"split\.test_fraction"):
        load_params(path, reads=("pair", "split"), stage="split")


def test_reading_an_undeclared_section_names_stage_and_key():
    params = load_params(ROOT / "params.yaml", reads=("pair", "split"), stage="split")
    assert params.split.seed == 2024
    with pytest.raises(UndeclaredParamError, match=r"stage split reads params 'train'"):
        params.train  # noqa: B018


def test_dotted_declarations_allow_those_keys_only():
    reads = ("pair", "item_features.clip.model", "item_features.batch_size")
    params = load_params(ROOT / "params.yaml", reads=reads, stage="user_profiles")
    features = params.item_features
    assert (features.clip.model, features.batch_size) == ("ViT-B-32", 64)
    with pytest.raises(UndeclaredParamError, match=r"'item_features\.clip\.pretrained'"):
        features.clip.pretrained  # noqa: B018
    with pytest.raises(UndeclaredParamError, match=r"'item_features\.device'"):
        features.device  # noqa: B018
    with pytest.raises(UndeclaredParamError, match=r"reads all of 'item_features' \(model_dump\)"):
        features.model_dump()


def test_a_whole_section_beats_a_key_of_it():
    reads = ("item_features.clip.model", "item_features")
    params = load_params(ROOT / "params.yaml", reads=reads, stage="item_features")
    assert params.item_features.model_dump()["device"] == "auto"


def test_checks_across_sections_run_where_both_are_read(tmp_path):
    path = write_params(tmp_path / "params.yaml", item_features={"image_encoder": "clip"})
    with pytest.raises(ParamsError, match=r"image_encoder: 'clip' needs images\.enabled: true"):
        load_params(path, reads=("images.enabled", "item_features"), stage="item_features")


def test_sections_a_stage_does_not_read_are_not_imported():
    # download reads no train settings, so the training config code is not loaded (nor a
    # dvc.yaml dep of the stage).
    code = (
        "import sys; from pipeline.config import load_params; "
        "load_params('params.yaml', reads=('dataset', 'download', 'synthetic'), stage='download'); "
        "print(sorted(m for m in sys.modules if m.startswith('pipeline.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    loaded = ast.literal_eval(out)
    assert "pipeline.cdr.configs" not in loaded and "pipeline.config.split" not in loaded
    assert "pipeline.config.download" in loaded


def test_a_declared_key_must_exist():
    with pytest.raises(UndeclaredParamError, match=r"declares unknown param 'split\.sed'"):
        load_params(ROOT / "params.yaml", reads=("split.sed",), stage="split")
    with pytest.raises(UndeclaredParamError, match=r"declares unknown params section 'splt'"):
        load_params(ROOT / "params.yaml", reads=("splt",), stage="split")


@pytest.mark.parametrize("section", ["item_features", "user_profiles", "score"])
def test_a_device_that_is_not_auto_cpu_or_cuda_is_named(tmp_path, section):
    path = write_params(tmp_path / "params.yaml", **{section: {"device": "gpu"}})
    with pytest.raises(ParamsError, match=rf"{section}\.device: .*auto, cpu, cuda or cuda:N"):
        load_params(path)
    assert load_params(ROOT / "params.yaml", {f"{section}.device": "cuda:1"})


def test_an_unquoted_score_date_is_read_as_the_date(tmp_path):
    path = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text()
    path.write_text(text.replace('date: "2026-01-01"', "date: 2026-01-05", 1))
    assert load_params(path).score.date == "2026-01-05"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_where_there_is_none_names_the_param():
    with pytest.raises(PipelineError, match=r"user_profiles\.device: cuda:0 requested but CUDA"):
        resolve_device("cuda:0", "user_profiles.device")
    assert resolve_device("auto", "user_profiles.device") == "cpu"


def test_a_set_override_of_a_param_the_stage_does_not_read_is_refused():
    from pipeline import cli

    args = cli.parser("score").parse_args(["--params", str(ROOT / "params.yaml")])
    args.set = ["split.seed=3"]
    with pytest.raises(PipelineError, match=r"--set split\.seed: stage score does not read it"):
        cli.params_from(args, "score", ("pair", "train", "score"))
    args.set = ["images.enabled=false", "item_features.clip.model=RN50"]
    params = cli.params_from(args, "item_features", ("images.enabled", "item_features"))
    assert params.item_features.clip.model == "RN50" and not params.images.enabled


def test_an_empty_params_file_and_a_set_into_a_value_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ParamsError, match=r"empty.yaml: empty \(no sections\)"):
        load_params(empty)
    with pytest.raises(ParamsError, match=r"split\.seed\.x: split\.seed is 2024 in the file"):
        load_params(ROOT / "params.yaml", {"split.seed.x": 3})
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match=r"list.yaml: expected one mapping of sections, got list"):
        load_params(listed, {"split.seed": 3})
