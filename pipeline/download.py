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
from pathlib import Path

from pipeline import cli, paths
from pipeline.config import Params
from pipeline.io import write_json
from pipeline.io.fetch import check_gzip, fetch
from pipeline.sources import raw_files, synthetic

log = logging.getLogger("download")
PARAMS = ("dataset", "download", "synthetic")  # read here; dvc.yaml lists the same


def download(params: Params, raw_dir: Path = paths.RAW) -> dict:
    """Fetch or generate every raw file; return the manifest that was written."""
    manifest_path = raw_dir / "manifest.json"
    old = {e["path"]: e for e in raw_files.old_entries(manifest_path)}
    entries = []

    def record(complete: bool, later: list[raw_files.RawFile] = ()) -> dict:
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
        record(False)  # until generated: prepare refuses what a killed run left
        synthetic.generate(raw_dir, domains, **s.model_dump())
        for domain in domains:
            for kind, name in (("reviews", "reviews.jsonl.gz"), ("meta", "meta.jsonl.gz")):
                path = raw_dir / domain / name
                entries.append(
                    raw_files.entry(
                        raw_files.RawFile(domain, kind, f"synthetic:seed={s.seed}", path)
                    )
                )
    else:
        dl = params.download
        planned = raw_files.plan(params, raw_dir)
        record(False, planned)  # until the last file: prepare refuses what a failed run left
        for i, raw in enumerate(planned):
            prev = old.get(str(raw.path))
            if raw_files.is_remote(raw.url) and raw_files.finished(raw, prev):
                log.info(
                    "%s: already downloaded (%s bytes, sha256 %s...)",
                    raw.path,
                    prev["size"],
                    prev["sha256"][:12],
                )
                entries.append({**prev, "verified": True})
                continue
            log.info(
                "%s %s -> %s",
                "fetching" if raw_files.is_remote(raw.url) else "copying",
                raw.url,
                raw.path,
            )
            result = fetch(
                raw.url,
                raw.path,
                retries=dl.retries,
                backoff=dl.backoff_seconds,
                timeout=dl.timeout_seconds,
                check=check_gzip,
            )
            entries.append(raw_files.entry(raw, result.size, result.sha256))
            record(False, planned[i + 1 :])
    manifest = record(True)
    log.info("wrote %s (%d files)", manifest_path, len(entries))
    return manifest


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return download(cli.params_from(args, "download", PARAMS))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
