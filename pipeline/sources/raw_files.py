"""The raw files a dataset needs (where each comes from and lands) and their manifest entries:
what ``download`` fetches, and how it decides a file listed by an earlier run is finished."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline import paths
from pipeline.config import Params
from pipeline.io import read_json, sha256_file
from pipeline.io.fetch import check_gzip
from pipeline.sources import amazon

log = logging.getLogger("download")


@dataclass(frozen=True)
class RawFile:
    domain: str
    kind: str  # "reviews" or "meta"
    url: str
    path: Path


def plan(params: Params, raw_dir: Path = paths.RAW) -> list[RawFile]:
    """Which files the configured dataset needs, and where each one lands."""
    ds, dl = params.dataset, params.download
    files: list[RawFile] = []
    for domain, spec in ds.domains.items():
        if ds.format == "recbole":
            files.append(RawFile(domain, "reviews", spec.inter, raw_dir / domain / "reviews.inter"))
            if spec.item and dl.with_metadata:
                files.append(RawFile(domain, "meta", spec.item, raw_dir / domain / "meta.item"))
        elif ds.format.startswith("amazon"):
            base = (dl.base_url or amazon.DEFAULT_BASE_URL[ds.format]).rstrip("/")
            reviews_t, meta_t = amazon.DEFAULT_TEMPLATES[ds.format]
            reviews_t, meta_t = dl.reviews_template or reviews_t, dl.meta_template or meta_t
            ext = ".jsonl.gz" if ds.format == "amazon2023" else ".json.gz"
            url = f"{base}/{reviews_t.format(category=spec.category)}"
            files.append(RawFile(domain, "reviews", url, raw_dir / domain / f"reviews{ext}"))
            if dl.with_metadata:
                url = f"{base}/{meta_t.format(category=spec.category)}"
                files.append(RawFile(domain, "meta", url, raw_dir / domain / f"meta{ext}"))
    return files


def is_remote(url: str) -> bool:
    """An HTTP(S) URL (anything else is copied: file:// URLs and local paths)."""
    return url.startswith(("http://", "https://"))


def old_entries(path: Path) -> list[dict]:
    """The files an earlier run listed in the manifest ``path`` (none if it is missing or broken)."""
    try:
        return read_json(path).get("files", [])
    except (FileNotFoundError, ValueError):
        return []


def finished(raw: RawFile, prev: dict | None) -> bool:
    """Listed with this URL and size, and its content checked (now, if it never was)."""
    if not (
        prev is not None
        and prev.get("url") == raw.url
        and raw.path.exists()
        and raw.path.stat().st_size == prev.get("size")
    ):
        return False
    if prev.get("verified"):
        return True
    problem = check_gzip(raw.path)
    if problem is None and sha256_file(raw.path) != prev.get("sha256"):
        problem = "its sha256 is not the one listed"
    if problem:
        log.warning("%s: %s; fetching it again", raw.path, problem)
        raw.path.unlink()
        return False
    return True


def entry(raw: RawFile, size: int | None = None, sha256: str | None = None) -> dict:
    """The manifest entry of ``raw``; size and checksum read from disk unless known."""
    return {
        "domain": raw.domain,
        "kind": raw.kind,
        "url": raw.url,
        "path": str(raw.path),
        "size": raw.path.stat().st_size if size is None else size,
        "sha256": sha256_file(raw.path) if sha256 is None else sha256,
        "verified": True,  # generated here, or fetched and checked (io.fetch)
    }
