"""Stage ``download``: fetch (or generate) the raw files of every configured domain.

Writes ``data/raw/<domain>/reviews.<ext>`` and ``meta.<ext>`` plus ``data/raw/manifest.json``
(URL, size and sha256 of every file, whether its content was verified, and ``complete`` once
every file is there). HTTP downloads stream to disk, resume a partial file with a Range request
and retry with backoff (:mod:`pipeline.io.fetch`); a file is kept only once its content checks
out: a gzip file must decompress to its end, and a sha256 the server publishes must match. The
manifest is rewritten as each file completes, so a run that fails on a later file keeps the
earlier ones. A file listed with the same URL and size and a passed check is never fetched
again; one listed without a check (or failing it now) is checked again and fetched anew if it
fails. ``file://`` URLs and local paths (RecBole files, a local mirror) are copied the same
way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import cli, paths
from pipeline.config import Params
from pipeline.io import read_json, sha256_file, write_json
from pipeline.io.fetch import check_gzip, fetch
from pipeline.sources import amazon, synthetic

log = logging.getLogger("download")
PARAMS = ("dataset", "download", "synthetic")  # read here; dvc.yaml lists the same


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


def _is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def download(params: Params, raw_dir: Path = paths.RAW) -> dict:
    """Fetch or generate every raw file; return the manifest that was written."""
    manifest_path = raw_dir / "manifest.json"
    old = {e["path"]: e for e in _old_entries(manifest_path)}
    entries = []

    def record(complete: bool, later: list[RawFile] = ()) -> dict:
        # Files of a previous run not reached yet stay listed, so a failure loses none of them.
        kept = [old[str(r.path)] for r in later if str(r.path) in old and r.path.exists()]
        manifest = {
            "dataset": params.dataset.name,
            "format": params.dataset.format,
            "files": entries + kept,
            "complete": complete,
        }
        write_json(manifest, manifest_path)
        return manifest

    if params.dataset.format == "synthetic":
        s = params.synthetic
        domains = list(params.dataset.domains)
        log.info(
            "generating the embedded synthetic sample (%s) into %s", " + ".join(domains), raw_dir
        )
        synthetic.generate(raw_dir, domains, **s.model_dump())
        for domain in domains:
            for kind, name in (("reviews", "reviews.jsonl.gz"), ("meta", "meta.jsonl.gz")):
                path = raw_dir / domain / name
                entries.append(_entry(RawFile(domain, kind, f"synthetic:seed={s.seed}", path)))
    else:
        dl = params.download
        planned = plan(params, raw_dir)
        for i, raw in enumerate(planned):
            prev = old.get(str(raw.path))
            if _is_remote(raw.url) and _finished(raw, prev):
                log.info(
                    "%s: already downloaded (%s bytes, sha256 %s...)",
                    raw.path,
                    prev["size"],
                    prev["sha256"][:12],
                )
                entries.append({**prev, "verified": True})
                continue
            log.info(
                "%s %s -> %s", "fetching" if _is_remote(raw.url) else "copying", raw.url, raw.path
            )
            result = fetch(
                raw.url,
                raw.path,
                retries=dl.retries,
                backoff=dl.backoff_seconds,
                timeout=dl.timeout_seconds,
                check=check_gzip,
            )
            entries.append(_entry(raw, result.size, result.sha256))
            record(False, planned[i + 1 :])
    manifest = record(True)
    log.info("wrote %s (%d files)", manifest_path, len(entries))
    return manifest


def _old_entries(path: Path) -> list[dict]:
    try:
        return read_json(path).get("files", [])
    except (FileNotFoundError, ValueError):
        return []


def _finished(raw: RawFile, prev: dict | None) -> bool:
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


def _entry(raw: RawFile, size: int | None = None, sha256: str | None = None) -> dict:
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


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return download(cli.params_from(args, "download", PARAMS))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
