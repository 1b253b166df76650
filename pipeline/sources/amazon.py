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

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.errors import DamageLog
from pipeline.schemas import RAW_ITEM
from pipeline.sources.amazon_columns import meta_batches, review_batches
from pipeline.sources.lines import (
    BadField,
    batches,
    iter_lines,
    json_records,
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


def read_reviews(release: str, path: str | Path, damage: DamageLog) -> Iterator[pa.RecordBatch]:
    return review_batches(path, damage, review_extractor(release), REVIEW_FIELDS[release])


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


def read_meta(release: str, path: str | Path, damage: DamageLog) -> Iterator[pa.RecordBatch]:
    extract = meta_extractor(release)
    if release == "amazon2023":
        return meta_batches(path, damage, extract)
    records = json_records(iter_lines(path, damage), damage, literal_ok=release == "amazon2014")
    return batches(records, extract, RAW_ITEM, damage, with_line=False)


def meta_extractor(release: str) -> Callable[[dict], tuple]:
    """The RAW_ITEM values of one parsed metadata record."""
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

    return extract


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
