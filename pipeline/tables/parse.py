"""Raw files -> Parquet parts in :data:`~pipeline.schemas.RAW_INTERACTION` /
:data:`~pipeline.schemas.RAW_ITEM` shape, cached under ``data/cache/parsed`` by the raw file's
checksum, so an interrupted run resumes where it stopped."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from pipeline import paths
from pipeline.errors import DamageLog, InputError
from pipeline.io import ParquetPartWriter, read_meta, stable_hash
from pipeline.schemas import RAW_INTERACTION, RAW_ITEM
from pipeline.sources import read_interactions, read_items

log = logging.getLogger("prepare")

PARSER_VERSION = 1  # bump when a parser changes what it extracts: invalidates the parse cache


def parse_file(
    fmt: str, entry: dict, max_bad_fraction: float, cache_dir: Path = paths.PARSE_CACHE
) -> Path:
    """Parse one raw file (a manifest entry) into a cached Parquet part, or reuse it; check
    its damage."""
    try:
        return _parse_file(fmt, entry, max_bad_fraction, cache_dir)
    except InputError as exc:  # name the file the user gave, not only the copy read here
        url = str(entry.get("url") or "")
        if not url or url.startswith("synthetic:"):
            raise
        head, sep, rest = str(exc).partition("\n")
        raise InputError(f"{head} ({entry['path']} is a copy of {url}){sep}{rest}") from None


def _parse_file(fmt: str, entry: dict, max_bad_fraction: float, cache_dir: Path) -> Path:
    kind, source = entry["kind"], entry["path"]
    key = stable_hash([fmt, kind, entry["sha256"], PARSER_VERSION])
    part = cache_dir / f"{entry['domain']}-{kind}-{key}.parquet"
    if part.exists():
        damage = DamageLog(source, max_bad_fraction, **read_meta(part)["damage"])
        log.info("%s: parsed before (%s), reusing", source, part.name)
    else:
        damage = DamageLog(source, max_bad_fraction)
        schema, reader = (
            (RAW_INTERACTION, read_interactions) if kind == "reviews" else (RAW_ITEM, read_items)
        )
        log.info("parsing %s (%s %s)", source, fmt, kind)
        with ParquetPartWriter(part, schema) as writer:
            for batch in reader(fmt, source, damage):
                writer.write(batch)
            # The damage record travels with the part, so a resumed run reports the same.
            writer.set_meta({"damage": damage.state()})
    damage.check()
    return part


def parse_domains(
    fmt: str, entries: dict[tuple[str, str], dict], domains: list[str], max_bad_fraction: float
) -> tuple[dict[str, Path], dict[str, Path], dict[str, int]]:
    """Parse every domain's reviews (and metadata, where there is a file): the interaction
    parts, the metadata parts, and the records skipped per raw file."""
    inter_parts, meta_parts, skipped = {}, {}, {}
    for domain in domains:
        entry = entries[(domain, "reviews")]
        inter_parts[domain] = parse_file(fmt, entry, max_bad_fraction)
        skipped[entry["path"]] = read_meta(inter_parts[domain])["damage"]["bad"]
        if pl.scan_parquet(inter_parts[domain]).select(pl.len()).collect().item() == 0:
            raise InputError(f"domain '{domain}' has no usable interactions", path=entry["path"])
        if (domain, "meta") in entries:
            entry = entries[(domain, "meta")]
            meta_parts[domain] = parse_file(fmt, entry, max_bad_fraction)
            skipped[entry["path"]] = read_meta(meta_parts[domain])["damage"]["bad"]
    return inter_parts, meta_parts, skipped
