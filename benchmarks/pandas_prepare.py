"""The ``prepare`` work done the way the papers' public code does it, in pandas: the baseline of
the data benchmark.

    python -m benchmarks.pandas_prepare --manifest data/raw/manifest.json --out /tmp/pandas_out

PTUPCDR's ``preprocessing.py`` (and DiffCDR's, which starts from it) reads a review file with
``gzip.open`` and ``json.loads`` line by line into a Python list, then builds one
``pandas.DataFrame``. On top of that this does what ``prepare`` does, as plainly as pandas
allows: lines that do not parse, lack a field or have a rating outside 1..5 are dropped;
repeated (user, item) pairs are merged by their mean rating (latest time); the metadata is read
the same way (first record of an item wins) and left-joined onto the reviewed items; the users
table is a group-by; the three tables are written as Parquet. Prints the counts per domain, so
the benchmark can check that both implementations found the same rows.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import pandas as pd


def _records(path: str, row, errors: tuple) -> tuple[list, int]:
    """``row(record)`` of every JSON line of a gzip file, and how many lines raised ``errors``."""
    rows, bad = [], 0
    with gzip.open(path, "rb") as fh:
        for line in fh:
            try:
                rows.append(row(json.loads(line)))
            except errors:
                bad += 1
    return rows, bad


def _reviews(path: str) -> tuple[pd.DataFrame, int]:
    def row(r: dict) -> list:
        return [r["user_id"], r["parent_asin"], float(r["rating"]), r.get("timestamp")]

    rows, bad = _records(path, row, (ValueError, KeyError, TypeError))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    keep = df["rating"].between(1, 5)
    return df[keep], bad + int((~keep).sum())


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        value = "\n".join(str(v) for v in value if v)
    return " ".join(str(value).split()) or None


def _price(value) -> float | None:
    try:
        return float(str(value).replace("$", "").replace(",", "").split("-")[0])
    except ValueError:
        return None


def _meta(path: str) -> tuple[pd.DataFrame, int]:
    def row(r: dict) -> list:
        images = [i.get("large") or i.get("hi_res") for i in r.get("images") or []]
        return [
            r["parent_asin"],
            _text(r.get("title")),
            _text(r.get("description")),
            r.get("categories") or [],
            [u for u in images if u],
            _text(r.get("store")),
            _price(r.get("price")),
        ]

    rows, bad = _records(path, row, (ValueError, KeyError, TypeError, AttributeError))
    columns = ["item_id", "title", "description", "categories", "image_urls", "brand", "price"]
    return pd.DataFrame(rows, columns=columns), bad


def prepare(manifest: dict, out: Path) -> dict:
    inter, items, counts = [], [], {}
    for entry in manifest["files"]:
        domain = entry["domain"]
        if entry["kind"] == "reviews":
            df, bad = _reviews(entry["path"])
            inter.append(df.assign(domain=domain))
        else:
            df, bad = _meta(entry["path"])
            df = df.drop_duplicates("item_id", keep="first")
            items.append(df.assign(domain=domain, has_metadata=True))
        counts[f"{domain}_{entry['kind']}_bad"] = bad
    df = pd.concat(inter, ignore_index=True)
    df["timestamp"] = pd.to_datetime(df["timestamp"], unit="ms", utc=True)
    merged = df.groupby(["domain", "user_id", "item_id"], as_index=False).agg(
        rating=("rating", "mean"),
        event_timestamp=("timestamp", "max"),
        n_duplicates=("rating", "size"),
    )
    del df
    merged.to_parquet(out / "interactions.parquet", index=False)
    reviewed = merged.groupby(["domain", "item_id"], as_index=False).agg(
        n_interactions=("user_id", "size")
    )
    table = reviewed.merge(pd.concat(items), on=["domain", "item_id"], how="left")
    table["has_metadata"] = table["has_metadata"].fillna(False).astype(bool)
    table.to_parquet(out / "items.parquet", index=False)
    users = merged.groupby(["user_id", "domain"], as_index=False).agg(
        n_interactions=("item_id", "size"),
        mean_rating=("rating", "mean"),
        first_timestamp=("event_timestamp", "min"),
        last_timestamp=("event_timestamp", "max"),
    )
    users.to_parquet(out / "users.parquet", index=False)
    for domain, group in merged.groupby("domain"):
        counts[f"{domain}_interactions"] = len(group)
        counts[f"{domain}_users"] = int(group["user_id"].nunique())
        counts[f"{domain}_items"] = int(group["item_id"].nunique())
    per_domain = users.groupby("user_id")["domain"].nunique()
    counts["overlap_users"] = int((per_domain > 1).sum())
    return counts


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, default=Path("data/raw/manifest.json"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    counts = prepare(json.loads(args.manifest.read_text()), args.out)
    print(json.dumps(counts, sort_keys=True))
    return counts


if __name__ == "__main__":
    main()
