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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.errors import DamageLog
from pipeline.schemas import RAW_INTERACTION, RAW_ITEM
from pipeline.sources.lines import (
    BadField,
    batches,
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
    path: str | Path, damage: DamageLog, *, literal_ok: bool
) -> Iterator[tuple[int, dict]]:
    for number, text in iter_lines(path, damage):
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
    user_key, item_key, rating_key, time_key, unit = REVIEW_FIELDS[release]

    def extract(record: dict) -> tuple:
        return (
            require_id(record, user_key),
            require_id(record, item_key),
            rating_value(record.get(rating_key), rating_key),
            timestamp_value(record.get(time_key), time_key, unit),
        )

    records = _records(path, damage, literal_ok=False)
    return batches(records, extract, RAW_INTERACTION, damage, with_line=True)


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

    records = _records(path, damage, literal_ok=release == "amazon2014")
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
