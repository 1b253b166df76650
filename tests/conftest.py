"""Shared fixtures: the repository root, ../shared/data (skipped with a reason if absent),
a scratch project directory where stages run with their relative paths, and a tiny random
causal LM with SmolLM2's tokenizer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.httpserver import http_server  # noqa: F401  (re-exported fixture)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DENSE = SHARED / "data" / "amazon-books-movies-dense"
ITEM_TEXT = SHARED / "data" / "amazon-item-text"


@pytest.fixture
def shared_data() -> Path:
    if not DENSE.exists():
        pytest.skip(f"real data not found at {SHARED / 'data'} (../shared beside the repository)")
    return SHARED / "data"


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty project directory with the repository's params.yaml; stages run inside it."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_params(path: Path, **sections) -> Path:
    """Write params.yaml from the repository's defaults with some sections replaced/merged."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(params.get(name), dict) and name != "dataset":
            params[name] = {**params[name], **value}
        else:
            params[name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def write_valid_users(root: Path, values: dict[str, list[float]]) -> Path:
    """``data/evaluation/valid_users.parquet`` as evaluate writes it: each method's NDCG@10
    for the same validation users (``u0``, ``u1``, ...), what ``score.method: auto`` reads."""
    from pipeline.recs import trained

    path = root / "data/evaluation/valid_users.parquet"
    trained.write_valid_values(
        {m: ([f"u{i}" for i in range(len(vs))], vs) for m, vs in values.items()}, path
    )
    return path


AMAZON = {
    "name": "mini",
    "format": "amazon2023",
    "domains": {"books": {"category": "Books"}, "movies": {"category": "Movies_and_TV"}},
}


def amazon_params(root: Path, base_url: str, **sections) -> Path:
    """``root/params.yaml`` for an Amazon 2023 mirror at ``base_url`` (Books -> Movies_and_TV,
    no waiting between download attempts), with ``sections`` merged in."""
    download = {"base_url": base_url, "backoff_seconds": 0.0, **sections.pop("download", {})}
    return write_params(root / "params.yaml", dataset=AMAZON, download=download, **sections)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Tests never reach a model hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


TINY_SYNTHETIC = {
    "n_users": 240,
    "n_items": 80,
    "min_per_user": 5,
    "max_per_user": 15,
}


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A small embedded-sample project with download, prepare and split done (read-only!)."""
    from pipeline import download, prepare, split
    from pipeline.config import load_params

    root = tmp_path_factory.mktemp("tiny")
    old = Path.cwd()
    os.chdir(root)
    try:
        write_params(root / "params.yaml", synthetic=TINY_SYNTHETIC)
        params = load_params(root / "params.yaml")
        download.download(params)
        prepare.prepare(params)
        split.split(params)
    finally:
        os.chdir(old)
    return root


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template, saved to disk."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipeline.features.encoders.llm import SMOLLM2_FILE, smollm2_folder

    out = tmp_path_factory.mktemp("tiny_lm")
    tok = AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_FILE)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """The fault suite's project (:func:`tests.faults.make_project`: the tiny sample, trained),
    built once per session and shared by its modules (read-only: tests copy what they change)."""
    import torch

    from tests.faults import make_project

    torch.set_num_threads(1)
    return make_project(tmp_path_factory.mktemp("trained") / "p")


# Small base models for the cold-start tests: trained once per session, shared by every test
# that fits methods on the tiny project (harness.fit(..., base=tiny_base)).
TINY_MF = {"epochs": 10, "bpr_epochs": 10, "dim": 8, "bpr_dim": 8}


@pytest.fixture(scope="session")
def tiny_data(tiny_project):
    """The tiny project's (books -> movies) cold-start data."""
    from pipeline.cdr import data as cdr_data

    return cdr_data.load(
        tiny_project / "data/prepared/interactions.parquet",
        tiny_project / "data/split/roles.parquet",
        "books",
        "movies",
    )


@pytest.fixture(scope="session")
def tiny_base(tiny_data):
    """Base models of :func:`tiny_data` (seed 0, :data:`TINY_MF`)."""
    import torch

    from pipeline.cdr.base import fit_base_models
    from pipeline.cdr.configs import MFConfig

    torch.set_num_threads(1)
    return fit_base_models(tiny_data, MFConfig(**TINY_MF), 0)
