"""LLM profiles served by llama.cpp against the in-process transformers backend.

    python -m benchmarks.served_profiles --n 32 --batch-size 16 --threads 2

The same real prompts as ``benchmarks.profile_throughput`` (the ``user_profile_v1`` template
filled with embedded-sample users' Books histories), the same model (SmolLM2-135M-Instruct,
the offline package's Q4_1 GGUF), greedy, the same ``max_new_tokens``:

- **in-process**: :class:`~pipeline.features.encoders.llm.TransformersWriter` (transformers
  loads the GGUF dequantised to float32), ``--batch-size`` prompts per generate call, left
  padding, ``--threads`` torch threads;
- **served**: llama.cpp's OpenAI-compatible server (llama-cpp-python, the
  ``user_profiles.backend: llamacpp`` path) with ``--threads`` threads, called through
  :class:`~pipeline.features.encoders.llm.OpenAIWriter` with ``--concurrency`` requests in
  flight.

Prints profiles per second of each, the speed-up, and how many profiles are identical
word for word.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from benchmarks.profile_throughput import prompts
from pipeline.features.encoders.llama_server import llama_server
from pipeline.features.encoders.llm import (
    SMOLLM2_FILE,
    OpenAIWriter,
    TransformersWriter,
    smollm2_folder,
)
from pipeline.features.profiles import load_prompt

ROOT = Path(__file__).resolve().parents[1]


def run(writer, conversations: list, batch: int, max_new_tokens: int) -> tuple[list[str], float]:
    writer.generate(conversations[:2], 4)  # warm-up
    out: list[str] = []
    start = time.perf_counter()
    for i in range(0, len(conversations), batch):
        out += writer.generate(conversations[i : i + batch], max_new_tokens)
    return out, time.perf_counter() - start


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="profiles per backend")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-items", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    conversations = prompts(
        args.n, load_prompt(ROOT / "prompts/user_profile_v1.txt"), args.max_items
    )
    local = TransformersWriter("smollm2")
    here, here_s = run(local, conversations, args.batch_size, args.max_new_tokens)
    del local
    with llama_server(smollm2_folder() / SMOLLM2_FILE, "smollm2", args.threads) as url:
        served_writer = OpenAIWriter(url, "smollm2", concurrency=args.concurrency)
        served, served_s = run(served_writer, conversations, args.batch_size, args.max_new_tokens)
    same = sum(a == b for a, b in zip(here, served, strict=True))
    n = len(conversations)
    print(
        f"\nSmolLM2-135M-Instruct Q4_1, {n} prompts, {args.max_new_tokens} new tokens, greedy, "
        f"{args.threads} threads\n"
    )
    print("| backend | profiles | seconds | profiles/s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    print(f"| transformers, in-process, batches of {args.batch_size} | {n} | {here_s:.1f} | "
          f"{n / here_s:.2f} | 1.0x |")  # fmt: skip
    print(f"| llama.cpp server, {args.concurrency} requests in flight | {n} | {served_s:.1f} | "
          f"{n / served_s:.2f} | {here_s / served_s:.1f}x |")  # fmt: skip
    print(f"\nidentical profiles: {same} of {n}")
    for a, b in list(zip(here, served, strict=True))[:3]:
        print(f"\n  transformers: {a!r}\n  llama.cpp:    {b!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
