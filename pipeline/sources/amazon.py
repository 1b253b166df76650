"""Amazon review releases: 2023 (McAuley Lab, JSON lines), 2018 and 2014 (the DiffCDR data).

Field names per release:

=========  =================================  =====================================
release    reviews                            metadata
=========  =================================  =====================================
2023       user_id, parent_asin, rating,      parent_asin, title, description[],
           timestamp (ms)                     categories[], images[{large, hi_res}],
                                              store, price
2018       reviewerID, asin, overall,         asin, title, description[], category[],
           unixReviewTime (s)                 imageURLHighRes[], imageURL[], brand, price
2014       reviewerID, asin, overall,         asin, title, description, categories[[]],
           unixReviewTime (s)                 imUrl, brand, price (Python dict literals)
=========  =================================  =====================================
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import DamageLog
from pipeline.schemas import RAW_INTERACTION, RAW_ITEM, TIMESTAMP
from pipeline.sources.blocks import parse_block, read_blocks
from pipeline.sources.lines import (
    BadField,
    batches,
    decode_line,
    iter_lines,
    price_value,
    rating_value,
    require_id,
    string_list,
    text_value,
    timestamp_value,
)

# Where each release keeps the fields the pipeline needs.
REVIEW_FIELDS = {
    "amazon2023": ("user_id", "parent_asin", "rating", "timestamp", "ms"),
    "amazon2018": ("reviewerID", "asin", "overall", "unixReviewTime", "s"),
    "amazon2014": ("reviewerID", "asin", "overall", "unixReviewTime", "s"),
}
ITEM_KEY = {"amazon2023": "parent_asin", "amazon2018": "asin", "amazon2014": "asin"}

# Default file layout under each release's base URL ({category} is the domain's category).
DEFAULT_BASE_URL = {
    "amazon2023": "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw",
    "amazon2018": "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2",
    "amazon2014": "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles",
}
DEFAULT_TEMPLATES = {
    "amazon2023": (
        "review_categories/{category}.jsonl.gz",
        "meta_categories/meta_{category}.jsonl.gz",
    ),
    "amazon2018": ("categoryFilesSmall/{category}_5.json.gz", "metaFiles2/meta_{category}.json.gz"),
    "amazon2014": ("reviews_{category}_5.json.gz", "meta_{category}.json.gz"),
}


def _records(
    lines: Iterable[tuple[int, str]], damage: DamageLog, *, literal_ok: bool
) -> Iterator[tuple[int, dict]]:
    for number, text in lines:
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            record = _literal(text) if literal_ok else None
            if record is None:
                damage.skip(
                    number, None, f"malformed JSON ({exc.msg}, column {exc.colno})", "bad_json"
                )
                continue
        if not isinstance(record, dict):
            damage.skip(
                number, None, f"expected a JSON object, got {type(record).__name__}", "bad_json"
            )
            continue
        yield number, record


def _literal(text: str) -> dict | None:
    # The 2014 metadata files are Python dict literals ({'asin': ...}), not JSON.
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def read_reviews(release: str, path: str | Path, damage: DamageLog) -> Iterator[pa.RecordBatch]:
    return _review_batches(path, damage, review_extractor(release), REVIEW_FIELDS[release])


def review_extractor(release: str) -> Callable[[dict], tuple]:
    """The RAW_INTERACTION values (without the line) of one parsed review record."""
    user_key, item_key, rating_key, time_key, unit = REVIEW_FIELDS[release]

    def extract(record: dict) -> tuple:
        return (
            require_id(record, user_key),
            require_id(record, item_key),
            rating_value(record.get(rating_key), rating_key),
            timestamp_value(record.get(time_key), time_key, unit),
        )

    return extract


def _review_batches(
    path: str | Path, damage: DamageLog, extract: Callable[[dict], tuple], fields: tuple
) -> Iterator[pa.RecordBatch]:
    """RAW_INTERACTION batches of a reviews file, a block at a time: pyarrow reads the plain
    lines (:mod:`pipeline.sources.blocks`); any line whose values it did not read exactly as
    ``extract`` would take them goes through ``json.loads`` and ``extract``, in line order."""
    *keys, unit = fields
    types = (pa.string(), pa.string(), pa.float64(), pa.float64())
    schema = pa.schema(list(zip(keys, types, strict=True)))
    misses = 0  # blocks in a row where pyarrow read nothing: it is tried on every 8th only
    for block in read_blocks(path):
        parsed = parse_block(block, schema, tries=misses < 2 or misses % 8 == 0)
        misses = misses + 1 if parsed.missed else 0
        good = _plain_reviews(parsed.table, keys, unit)
        fast = _review_rows(parsed.table.filter(good), keys, unit, parsed.fast[good] + block.first)
        damage.total += fast.num_rows  # each counts as a record read (DamageLog.ok)
        slow = np.sort(np.r_[parsed.slow, parsed.fast[~good]])
        raw = ((block.number(i), block.raw(i)) for i in slow)
        texts = ((n, t) for n, r in raw if (t := decode_line(n, r, damage)) is not None)
        records = _records(texts, damage, literal_ok=False)
        rest = [
            pa.Table.from_batches([b])
            for b in batches(records, extract, RAW_INTERACTION, damage, with_line=True)
        ]
        yield from pa.concat_tables([fast, *rest]).sort_by("line").to_batches()


def _plain_reviews(table: pa.Table, keys: list[str], unit: str) -> np.ndarray:
    """Rows whose values are what the per-line extract takes them to be: ids that need no
    trimming, a rating in 1..5, a whole-number time in range (or none)."""
    user, item, rating, time = (table.column(k) for k in keys)
    ok = pc.and_(_plain_id(user), _plain_id(item))
    ok = pc.and_(
        ok, pc.fill_null(pc.and_(pc.greater_equal(rating, 1.0), pc.less_equal(rating, 5.0)), False)
    )
    scale = 1000.0 if unit == "ms" else 1.0  # timestamp_value's range, in the file's unit
    in_range = pc.and_(
        pc.and_(
            pc.greater_equal(time, 631_152_000 * scale), pc.less_equal(time, 4_102_444_800 * scale)
        ),
        pc.equal(pc.floor(time), time),
    )
    ok = pc.and_(ok, pc.or_kleene(pc.is_null(time), in_range))
    return ok.to_numpy(zero_copy_only=False)


def _plain_id(ids: pa.ChunkedArray) -> pa.ChunkedArray:
    # First and last character printable ASCII: str.strip() leaves it as it is.
    first = pc.match_substring_regex(ids, r"\A[!-~]")
    return pc.fill_null(pc.and_(first, pc.match_substring_regex(ids, r"[!-~]\z")), False)


def _review_rows(table: pa.Table, keys: list[str], unit: str, lines: np.ndarray) -> pa.Table:
    user, item, rating, time = (table.column(k) for k in keys)
    ms = pc.multiply(time, 1000.0) if unit == "s" else time
    columns = [
        user,
        item,
        pc.cast(rating, pa.float32()),
        pc.cast(pc.cast(ms, pa.int64()), TIMESTAMP),
        pa.array(lines, pa.int64()),
    ]
    return pa.Table.from_arrays(columns, schema=RAW_INTERACTION)


def read_meta(release: str, path: str | Path, damage: DamageLog) -> Iterator[pa.RecordBatch]:
    key = ITEM_KEY[release]

    def extract(record: dict) -> tuple:
        return (
            require_id(record, key),
            _title(record.get("title")),
            text_value(record.get("description")),
            string_list(record.get("categories") or record.get("category")),
            _image_urls(release, record),
            text_value(record.get("store") if release == "amazon2023" else record.get("brand")),
            price_value(record.get("price")),
        )

    records = _records(iter_lines(path, damage), damage, literal_ok=release == "amazon2014")
    return batches(records, extract, RAW_ITEM, damage, with_line=False)


def _title(value: Any) -> str | None:
    if value is not None and not isinstance(value, str | int | float):
        raise BadField("title", f"expected text, got {type(value).__name__}", "bad_field")
    return text_value(value)


def _image_urls(release: str, record: dict) -> list[str]:
    if release == "amazon2023":
        images = record.get("images") or []
        if not isinstance(images, list):
            raise BadField("images", "expected a list", "bad_field")
        urls = []
        for image in images:
            if isinstance(image, dict):
                # 'large' is CLIP-sized; 'hi_res' is often null and much bigger.
                url = image.get("large") or image.get("hi_res") or image.get("thumb")
                if isinstance(url, str) and url:
                    urls.append(url)
        return urls
    if release == "amazon2018":
        return string_list(record.get("imageURLHighRes") or record.get("imageURL"))
    return string_list(record.get("imUrl"))
