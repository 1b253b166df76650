"""LLM profile throughput: batched generation (the stage's path) against one prompt at a time.

    python -m benchmarks.profile_throughput --n 32 --batch-size 16

Prompts are the real ones: the ``user_profile_v1`` template filled with histories of the
embedded sample's users (generated in a temporary directory). Both modes run the same model
(SmolLM2-135M-Instruct from the offline package by default), greedy, same ``max_new_tokens``.
Prints a markdown table with profiles per second and the speed-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from pipeline.features.encoders.llm import TransformersWriter
from pipeline.features.profiles import history_lines, load_prompt, render
from pipeline.features.prompts import Prompt

ROOT = Path(__file__).resolve().parents[1]


def prompts(n: int, template: Prompt, max_items: int) -> list[list[dict]]:
    """``n`` rendered profile prompts from embedded-sample users with a Books history."""
    from pipeline import download, prepare
    from pipeline.config import load_params

    reads = (*download.PARAMS, *prepare.PARAMS)  # the sections the two stages read
    params = load_params(ROOT / "params.yaml", {"dataset.format": "synthetic"}, reads, "prompts")
    old = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            download.download(params)
            prepare.prepare(params)
            inter = pl.read_parquet("data/prepared/interactions.parquet").filter(
                pl.col("domain") == "books"
            )
            items = pl.read_parquet(
                "data/prepared/items.parquet", columns=["item_id", "title", "categories"]
            )
        finally:
            os.chdir(old)
    rows = inter.join(items, on="item_id").partition_by("user_id", as_dict=True)
    out = []
    for key in sorted(rows)[:n]:
        lines, _, _ = history_lines(rows[key], max_items)
        out.append([{"role": "user", "content": render(template, lines, "books", "movies")}])
    return out


def main(argv=None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="profiles per mode")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-items", type=int, default=6)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    template = load_prompt(ROOT / "prompts/user_profile_v1.txt")
    conversations = prompts(args.n, template, args.max_items)
    writer = TransformersWriter(args.model)
    writer.generate(conversations[:2], 4)  # warm-up
    rows = []
    for label, size in (("one at a time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        start = time.perf_counter()
        for i in range(0, len(conversations), size):
            writer.generate(conversations[i : i + size], args.max_new_tokens)
        seconds = time.perf_counter() - start
        rows.append((label, len(conversations), seconds, len(conversations) / seconds))
    base = rows[0][3]
    print(
        f"\nmodel {writer.model_id}, {args.max_new_tokens} new tokens, greedy, {args.threads} threads\n"
    )
    print("| mode | profiles | seconds | profiles/s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for label, n, seconds, rate in rows:
        print(f"| {label} | {n} | {seconds:.1f} | {rate:.2f} | {rate / base:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
