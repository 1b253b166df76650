"""Small raw files in the real record shapes of each source, written by tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def gz_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


def review2023(user: str, item: str, rating: float, ts: int = 1_600_000_000_000, **extra) -> str:
    record = {
        "rating": rating,
        "title": "Great",
        "text": "Loved it",
        "images": [],
        "asin": item,
        "parent_asin": item,
        "user_id": user,
        "timestamp": ts,
        "helpful_vote": 0,
        "verified_purchase": True,
    }
    record.update(extra)
    return json.dumps(record)


def meta2023(item: str, title: str = "A Book", **extra) -> str:
    record = {
        "main_category": "Books",
        "title": title,
        "average_rating": 4.5,
        "rating_number": 10,
        "features": ["Paperback"],
        "description": ["First line.", "Second line."],
        "price": 9.99,
        "images": [
            {
                "thumb": f"https://img/{item}_t.jpg",
                "large": f"https://img/{item}_l.jpg",
                "variant": "MAIN",
                "hi_res": None,
            }
        ],
        "videos": [],
        "store": "Some Press",
        "categories": ["Books", "Fantasy"],
        "details": {"Publisher": "X"},
        "parent_asin": item,
        "bought_together": None,
    }
    record.update(extra)
    return json.dumps(record)


def review2018(user: str, item: str, rating: float, ts: int = 1_400_000_000) -> str:
    return json.dumps(
        {
            "overall": rating,
            "verified": True,
            "reviewTime": "05 13, 2014",
            "reviewerID": user,
            "asin": item,
            "reviewerName": "Someone",
            "reviewText": "Good.",
            "summary": "Fine",
            "unixReviewTime": ts,
        }
    )


def meta2018(item: str, title: str = "A Movie") -> str:
    return json.dumps(
        {
            "category": ["Movies & TV", "Drama"],
            "description": ["A drama."],
            "title": title,
            "brand": "Studio",
            "price": "$12.99",
            "asin": item,
            "imageURL": [f"https://img/{item}.jpg"],
            "imageURLHighRes": [f"https://img/{item}_hi.jpg"],
        }
    )


def meta2014(item: str, title: str = "A CD") -> str:
    # The 2014 metadata lines are Python dict literals, not JSON.
    return repr(
        {
            "asin": item,
            "title": title,
            "price": 7.5,
            "imUrl": f"http://img/{item}.jpg",
            "categories": [["CDs & Vinyl", "Rock"], ["CDs & Vinyl", "Pop"]],
            "description": "Songs.",
        }
    )
