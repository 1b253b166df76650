"""A llama.cpp OpenAI-compatible server on 127.0.0.1 for the length of a run.

``user_profiles.backend: llamacpp`` serves a GGUF model (the offline SmolLM2 package's by
default) with ``llama-cpp-python``'s server (``python -m llama_cpp.server``) in a child process,
and writes the profiles through the same client as any OpenAI-compatible endpoint
(:class:`~pipeline.features.encoders.llm.OpenAIWriter`). The server is stopped when the block
ends, also on an error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from pipeline.errors import PipelineError
from pipeline.features.encoders.llm import SMOLLM2_FILE, OpenAIWriter, smollm2_folder

START_TIMEOUT = 120.0  # seconds for the server to load the model and answer
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(
    gguf: Path, alias: str, threads: int | None = None, n_ctx: int = 2048
) -> Iterator[str]:
    """Serve ``gguf`` as model ``alias``; yields the base URL (``http://127.0.0.1:PORT/v1``)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise PipelineError(
            "user_profiles.backend llamacpp needs llama-cpp-python: "
            "pip install 'llama-cpp-python[server]' (make setup installs it)"
        )
    port = free_port()
    command = [
        *(sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)),
        *("--model_alias", alias, "--host", "127.0.0.1", "--port", str(port)),
        *("--n_threads", str(threads or os.cpu_count() or 1), "--n_ctx", str(n_ctx)),
        *("--verbose", "false"),
    ]
    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(proc, url, log)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen, url: str, log) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise PipelineError(f"the llama.cpp server exited ({proc.returncode}):\n{tail}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/models", timeout=2).ok:
                return
        time.sleep(0.2)
    raise PipelineError(f"the llama.cpp server did not answer at {url} in {START_TIMEOUT:.0f} s")


def gguf_path(model: str, gguf_file: str | None) -> Path:
    """The GGUF file ``user_profiles.model`` / ``gguf_file`` name for llama.cpp."""
    if model == "smollm2":
        return smollm2_folder() / SMOLLM2_FILE
    path = Path(model) / gguf_file if gguf_file else Path(model)
    if path.suffix != ".gguf" or not path.is_file():
        raise PipelineError(
            f"user_profiles.model '{model}': backend llamacpp needs a GGUF file (smollm2, a "
            ".gguf path, or a directory with user_profiles.gguf_file), found none at {path}"
        )
    return path


class LlamaCppWriter(OpenAIWriter):
    """Profiles from a llama.cpp server that this writer starts and :meth:`close` stops."""

    def __init__(
        self,
        model: str,
        gguf_file: str | None = None,
        threads: int | None = None,
        timeout: float = 120.0,
        concurrency: int = 1,
    ):
        gguf = gguf_path(model, gguf_file)
        self._server = contextlib.ExitStack()
        url = self._server.enter_context(llama_server(gguf, model, threads))
        super().__init__(url, model, timeout=timeout, concurrency=concurrency)
        self.model_id = f"{model} (llama.cpp, {gguf.name})"

    def close(self) -> None:
        super().close()
        self._server.close()
