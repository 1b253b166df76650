"""download, prepare and split on Amazon-2023-shaped data of full-category size, against the
same prepare work in plain pandas.

    nice -n 10 python -m benchmarks.data_at_size --rows 5000000,20000000 --work /tmp/data_at_size \\
        --out benchmarks/results/data_at_size.json

For each size: :mod:`benchmarks.amazon_like` writes a mirror (``file://``) under ``--work``;
``download`` copies and checks it (then the mirror is deleted, unless ``--keep``), ``prepare``
parses it from scratch (no parse cache) and ``split`` assigns the roles, each stage a
subprocess of its own (``python -m pipeline.<stage>`` with the repository's params.yaml and
``-S`` overrides) whose wall time and peak resident memory (``ru_maxrss`` of that child) are
measured; then :mod:`benchmarks.pandas_prepare` does prepare's work the way the papers' code
does, on the same downloaded files, measured the same way (and stopped when its resident memory
passes ``--pandas-limit-gb``, so that it cannot take the shared machine down). Both
implementations must find the same interactions, users, items and overlap.

Prints a markdown table (rows per second of each stage's input, peak RSS, pandas against
prepare, memory at the largest size against the smallest) and writes the records as JSON.
``--repeat N`` runs prepare (from scratch each time) and split N times per size: a single
run's peak moves by about a tenth of a GB with the allocators' timing, so the table then
gives every run's peak and takes the largest as the stage's.
Everything under ``--work`` is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIR = {"books": "Books", "movies": "Movies_and_TV"}


def stage_reads(name: str, keys: list[str]) -> list[str]:
    """Those of ``keys`` the stage ``name`` reads (a stage refuses a -S of anything else),
    asked of a child process: importing the stage here would grow this process, whose peak
    RSS every child starts with."""
    code = (
        f"import json, sys; from pipeline import cli; from pipeline.{name} import PARAMS; "
        "print(json.dumps([k for k in json.loads(sys.argv[1]) if cli.reads_key(PARAMS, k)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(keys)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout)


def run(cmd: list[str], cwd: Path, limit_gb: float | None = None) -> dict:
    """Run ``cmd``; its wall seconds, peak RSS (GB: ``ru_maxrss`` from wait4, which also counts
    this process's RSS when it forked, kept small on purpose), exit code, and whether it was
    stopped for passing ``limit_gb``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stopped = threading.Event()
    if limit_gb:
        threading.Thread(target=_watch, args=(proc.pid, limit_gb, stopped), daemon=True).start()
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    record = {
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),  # KiB on Linux
        "load_before": round(load, 1),
        "load_after": round(os.getloadavg()[0], 1),
        "exit": proc.returncode,
        "stopped_over_limit": stopped.is_set(),
    }
    if proc.returncode and not stopped.is_set():
        print(output[-3000:], file=sys.stderr)
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    record["output"] = output
    return record


def _watch(pid: int, limit_gb: float, stopped: threading.Event) -> None:
    while True:
        try:
            with open(f"/proc/{pid}/status") as fh:
                rss_kb = next(int(x.split()[1]) for x in fh if x.startswith("VmRSS"))
        except (OSError, StopIteration):
            return
        if rss_kb > limit_gb * 2**20:
            stopped.set()
            os.kill(pid, 9)
            return
        time.sleep(0.2)


def one_size(
    rows: int, work: Path, seed: int, keep: bool, limit_gb: float, repeat: int = 1
) -> dict:
    mirror, stage_dir = work / f"mirror-{rows}", work / f"run-{rows}"
    shutil.rmtree(stage_dir, ignore_errors=True)
    stage_dir.mkdir(parents=True)
    print(f"== {rows:,} review lines: generating {mirror}", file=sys.stderr, flush=True)
    # In a process of its own: a child starts with its parent's peak RSS, so this one stays small.
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.amazon_like",
        "--out",
        str(mirror),
        "--rows",
        str(rows),
    ]
    generated_s = run([*cmd, "--seed", str(seed)], ROOT)["seconds"]
    truth = json.loads((mirror / "truth.json").read_text())
    files = truth["categories"]
    lines = sum(c["review_lines"] + c["meta_records"] for c in files.values())
    gz_bytes = sum(c["reviews_bytes"] + c["meta_bytes"] for c in files.values())
    overrides = {
        "dataset.format": "amazon2023",
        "dataset.name": f"amazon-like-{rows}",
        "download.base_url": mirror.as_uri(),
    }

    def stage(name: str) -> list[str]:  # each stage is given the overrides of what it reads
        sets = [
            a for k in stage_reads(name, list(overrides)) for a in ("-S", f"{k}={overrides[k]}")
        ]
        return [
            sys.executable,
            "-m",
            f"pipeline.{name}",
            "--params",
            str(ROOT / "params.yaml"),
            *sets,
        ]

    out = {"rows": rows, "generated_s": generated_s, "gz_mb": round(gz_bytes / 2**20), "stages": {}}
    for name in ("download", "prepare", "split"):
        runs, cmd = [], stage(name)
        for _ in range(1 if name == "download" else repeat):
            print(f"   {name}", file=sys.stderr, flush=True)
            # Every prepare parses from scratch: a repeat must not reuse the parse cache.
            shutil.rmtree(stage_dir / "data/cache/parsed", ignore_errors=True)
            runs.append(run(cmd, stage_dir))
        out["stages"][name] = runs[0]
        if repeat > 1 and name != "download":
            # The peak of one run moves with the allocators' timing: report every run's, and
            # the largest as the stage's.
            runs[0]["peak_rss_gb_runs"] = [r["peak_rss_gb"] for r in runs]
            runs[0]["peak_rss_gb"] = max(runs[0]["peak_rss_gb_runs"])
        if name == "download" and not keep:
            shutil.rmtree(mirror)
    stats = json.loads((stage_dir / "metrics/data_stats.json").read_text())
    users = sum(json.loads((stage_dir / "metrics/split.json").read_text())["users"].values())
    print("   pandas", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "benchmarks.pandas_prepare", "--out", str(work / "pandas")]
    out["stages"]["pandas_prepare"] = run(cmd, stage_dir, limit_gb)
    pandas = out["stages"]["pandas_prepare"]
    if not pandas["stopped_over_limit"]:
        found = json.loads(pandas["output"].strip().splitlines()[-1])
        _same_counts(stats, found)
    shutil.rmtree(work / "pandas", ignore_errors=True)
    for record in out["stages"].values():
        record.pop("output")
    # What each stage reads: download and prepare every line of the raw files, split the users.
    out["input_rows"] = {
        "download": lines,
        "prepare": lines,
        "split": users,
        "pandas_prepare": lines,
    }
    out["tables"] = {
        d: {k: s[k] for k in ("interactions", "users", "items", "duplicate_rows_merged")}
        for d, s in stats["domains"].items()
    }
    out["overlap_users"] = stats["overlap_users"]
    out["records_skipped"] = sum(stats["records_skipped"].values())
    if not keep:
        shutil.rmtree(stage_dir)
    return out


def _same_counts(stats: dict, pandas: dict) -> None:
    for domain, s in stats["domains"].items():
        for key in ("interactions", "users", "items"):
            if s[key] != pandas[f"{domain}_{key}"]:
                raise SystemExit(
                    f"pandas found {pandas[f'{domain}_{key}']} {domain} {key}, prepare {s[key]}"
                )
    if sum(stats["overlap_users"].values()) != pandas["overlap_users"]:
        raise SystemExit(
            f"overlap: pandas {pandas['overlap_users']}, prepare {stats['overlap_users']}"
        )


def table(results: list[dict]) -> str:
    lines = [
        "| review lines | stage | input rows | seconds | rows/s | peak RSS GB | load |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for name, s in r["stages"].items():
            n = r["input_rows"][name]
            secs = (
                f"> {s['seconds']} (stopped at {s['peak_rss_gb']} GB)"
                if s["stopped_over_limit"]
                else s["seconds"]
            )
            rate = "-" if s["stopped_over_limit"] else f"{n / s['seconds']:,.0f}"
            peak = s["peak_rss_gb"]
            if "peak_rss_gb_runs" in s:
                peak = f"{peak} ({', '.join(map(str, s['peak_rss_gb_runs']))})"
            lines.append(
                f"| {r['rows']:,} | {name} | {n:,} | {secs} | {rate} | {peak} | "
                f"{s['load_before']} -> {s['load_after']} |"
            )
    lines += [
        "",
        "| review lines | pandas / prepare time | pandas / prepare peak RSS |",
        "|---:|---:|---:|",
    ]
    for r in results:
        p, q = r["stages"]["prepare"], r["stages"]["pandas_prepare"]
        more = "> " if q["stopped_over_limit"] else ""  # stopped: it would have taken more
        lines.append(
            f"| {r['rows']:,} | {more}{q['seconds'] / p['seconds']:.2f}x | "
            f"{more}{q['peak_rss_gb'] / p['peak_rss_gb']:.2f}x |"
        )
    if len(results) > 1:
        a, b = results[0], results[-1]
        lines += [
            "",
            f"| stage | peak RSS at {b['rows']:,} / at {a['rows']:,} lines |",
            "|---|---:|",
        ]
        for name in a["stages"]:
            ratio = b["stages"][name]["peak_rss_gb"] / a["stages"][name]["peak_rss_gb"]
            more = "> " if b["stages"][name]["stopped_over_limit"] else ""
            lines.append(f"| {name} | {more}{ratio:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="5000000,20000000", help="review lines, comma-separated")
    p.add_argument("--work", type=Path, default=Path("/tmp/data_at_size"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pandas-limit-gb", type=float, default=16.0)
    p.add_argument("--keep", action="store_true", help="keep the generated and written files")
    p.add_argument(
        "--repeat", type=int, default=1, help="run prepare and split this many times per size"
    )
    p.add_argument("--out", type=Path, help="write the records here as JSON")
    args = p.parse_args(argv)
    results = []
    try:
        for rows in (int(x) for x in args.rows.split(",")):
            results.append(
                one_size(rows, args.work, args.seed, args.keep, args.pandas_limit_gb, args.repeat)
            )
            print(table(results), file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
