"""Two CPU-heavy jobs on one machine: seconds per LLM batch alone and side by side, with torch's
default threads (one per core, per job) and with the threads shared (:mod:`pipeline.cpu`).

    python -m benchmarks.cpu_share --jobs 2 --batches 3 --batch-size 16

Each job is a process that loads SmolLM2-135M-Instruct (the offline package, as
``user_profiles`` does), then generates ``--batches`` batches of real profile prompts (the
``user_profile_v1`` template on the embedded sample's users), greedy, ``max_new_tokens`` 32,
timing each batch after a warm-up batch. Runs: one job alone (default threads), ``--jobs`` jobs
at once with default threads, ``--jobs`` jobs at once sharing the cores. Prints a markdown
table: mean seconds per batch and the slowdown against the job alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(mode: str, batches: int, batch_size: int, barrier: Path, jobs: int) -> None:
    """One job: prints its per-batch seconds as JSON."""
    import torch

    from benchmarks.profile_throughput import prompts
    from pipeline import cpu
    from pipeline.features.encoders.llm import TransformersWriter
    from pipeline.features.profiles import load_prompt

    convs = prompts(batch_size, load_prompt(ROOT / "prompts/user_profile_v1.txt"), 6)
    writer = TransformersWriter("smollm2")
    with cpu.Job("benchmark") as job:
        if mode == "default":
            torch.set_num_threads(os.cpu_count() or 1)  # what torch does on its own
        writer.generate(convs, 32)  # warm-up
        (barrier / str(os.getpid())).touch()
        while len(list(barrier.iterdir())) < jobs:  # every job starts timing together
            time.sleep(0.05)
        seconds = []
        for _ in range(batches):
            if mode == "shared":
                job.rebalance()
            t = time.perf_counter()
            writer.generate(convs, 32)
            seconds.append(time.perf_counter() - t)
    print(json.dumps({"threads": torch.get_num_threads(), "seconds": seconds}))


def run(jobs: int, mode: str, batches: int, batch_size: int) -> list[dict]:
    barrier = Path(tempfile.mkdtemp(prefix="cpu-share-"))
    cmd = [sys.executable, "-m", "benchmarks.cpu_share", "--worker", mode, "--jobs", str(jobs)]
    cmd += ["--batches", str(batches), "--batch-size", str(batch_size), "--barrier", str(barrier)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)  # torch decides, as in a plain run
    env.pop("COLDSTART_THREADS", None)
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(jobs)
    ]
    out = []
    for proc in procs:
        stdout, _ = proc.communicate()
        assert proc.returncode == 0, stdout
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    shutil.rmtree(barrier)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--worker", choices=["default", "shared"], help=argparse.SUPPRESS)
    p.add_argument("--barrier", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.batches, args.batch_size, args.barrier, args.jobs)
        return 0
    rows = [
        ("1 job alone, default threads", 1, "default"),
        (f"{args.jobs} jobs at once, default threads", args.jobs, "default"),
        (f"{args.jobs} jobs at once, shared threads", args.jobs, "shared"),
    ]
    results = {}
    for label, jobs, mode in rows:
        results[label] = run(jobs, mode, args.batches, args.batch_size)
    alone = sum(sum(r["seconds"]) for r in results[rows[0][0]]) / args.batches
    print(
        f"cores: {len(os.sched_getaffinity(0))}; batch of {args.batch_size} prompts, 32 new tokens"
    )
    print("| run | torch threads per job | s / batch (mean over jobs) | slowdown vs alone |")
    print("|---|---|---|---|")
    for label, jobs, _ in rows:
        runs = results[label]
        mean = sum(sum(r["seconds"]) for r in runs) / (args.batches * jobs)
        threads = ", ".join(str(r["threads"]) for r in runs)
        print(f"| {label} | {threads} | {mean:.1f} | {mean / alone:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
