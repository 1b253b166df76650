"""The embedded sample: a small two-domain catalogue generated offline, deterministic from a seed.

Users have latent tastes over genres that they carry across domains, plus a personal rating
bias (generous or harsh raters). Items belong to one or two genres and have a quality; their
titles and descriptions are written from genre vocabularies, so the words carry the tastes.
Ratings 1-5 follow bias + quality + taste match + noise; users mostly pick items that suit
them, with a long-tail popularity. Some users are in both domains (overlapping), some only in
the source (``books``), some only in the target (``movies``: side users).

The files are written in the Amazon Reviews 2023 shape (``<domain>.jsonl.gz`` reviews and
``meta_<domain>.jsonl.gz``), so the embedded default runs through the same parser as real data.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io import write_bytes
from pipeline.sources.synthetic_images import draw_item_image, item_seed

GENRES = {
    "fantasy": ["dragon", "wizard", "kingdom", "quest", "sorcery", "elven", "prophecy", "sword"],
    "mystery": ["detective", "murder", "clue", "alibi", "suspect", "inspector", "secret", "case"],
    "romance": ["love", "heart", "wedding", "passion", "summer", "letters", "kiss", "promise"],
    "science fiction": [
        "starship",
        "galaxy",
        "android",
        "colony",
        "orbit",
        "quantum",
        "alien",
        "future",
    ],
    "history": ["empire", "war", "revolution", "dynasty", "ancient", "battle", "century", "throne"],
    "horror": ["haunted", "ghost", "shadow", "curse", "blood", "nightmare", "crypt", "demon"],
    "comedy": [
        "laughs",
        "mishap",
        "prank",
        "roommates",
        "wedding crasher",
        "road trip",
        "blunder",
        "chaos",
    ],
    "adventure": [
        "jungle",
        "treasure",
        "voyage",
        "mountain",
        "expedition",
        "island",
        "pirate",
        "escape",
    ],
}
GENRE_NAMES = list(GENRES)

DOMAINS = {
    "books": {
        "category": "Books",
        "nouns": ["novel", "saga", "story", "chronicle", "memoir", "tale"],
        "verbs": ["reads like", "unfolds as", "is written as"],
        "prefix": "B",
    },
    "movies": {
        "category": "Movies & TV",
        "nouns": ["film", "series", "feature", "drama", "miniseries", "movie"],
        "verbs": ["plays like", "unfolds as", "is shot as"],
        "prefix": "M",
    },
}
# Words that reveal an item's quality in its description (text predicts the item bias).
PRAISE = ["acclaimed", "award-winning", "beloved", "masterful", "celebrated"]
PLAIN = ["modest", "uneven", "forgettable", "predictable", "workmanlike"]
TITLE_ADJ = ["Last", "Silent", "Hidden", "Golden", "Broken", "Crimson", "Forgotten", "Endless"]


@dataclass(frozen=True)
class Catalogue:
    """What the generator drew, for tests that check the sample carries its signal."""

    user_taste: np.ndarray  # (n_users, n_genres)
    user_bias: np.ndarray  # (n_users,)
    user_domains: list[tuple[str, ...]]
    n_reviews: dict[str, int]


def generate(
    out_dir: str | Path,
    domains: list[str],
    *,
    seed: int = 7,
    n_users: int = 1000,
    overlap_fraction: float = 0.6,
    target_only_fraction: float = 0.15,
    n_items: int = 300,
    min_per_user: int = 8,
    max_per_user: int = 40,
    rating_noise: float = 0.6,
    image_base_url: str | None = None,
) -> Catalogue:
    """Write ``<out_dir>/<domain>/{reviews,meta}.jsonl.gz`` for the two named domains.

    With ``image_base_url`` every item's metadata links to
    ``<image_base_url>/<domain>/images/<item_id>.png`` and that picture is written to
    ``<out_dir>/<domain>/images/<item_id>.png`` (serve ``out_dir`` at that URL).

    The first domain is the source side (its single-domain users are ``source_only``); the
    second is the target side (its single-domain users are side users).
    """
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or len(domains) != 2:
        raise ValueError(
            f"the synthetic sample has exactly two domains out of {sorted(DOMAINS)}; got {domains}"
        )
    rng = np.random.default_rng(seed)
    k = len(GENRES)
    out_dir = Path(out_dir)

    # Users: taste over genres shared across domains, a rating bias shared too.
    taste = rng.normal(0.0, 1.0, size=(n_users, k))
    bias = rng.normal(0.0, 0.45, size=n_users)
    n_overlap = round(overlap_fraction * n_users)
    n_target_only = round(target_only_fraction * n_users)
    membership = (
        [tuple(domains)] * n_overlap
        + [(domains[1],)] * n_target_only
        + [(domains[0],)] * (n_users - n_overlap - n_target_only)
    )
    order = rng.permutation(n_users)
    user_domains = [membership[i] for i in order]
    user_ids = [f"U{u:05d}" for u in range(n_users)]

    counts = {}
    for d_index, domain in enumerate(domains):
        spec = DOMAINS[domain]
        # Items: one main genre (sometimes a second), a quality, a long-tail popularity.
        main = rng.integers(0, k, size=n_items)
        second = np.where(rng.random(n_items) < 0.35, rng.integers(0, k, size=n_items), main)
        genre_mix = np.zeros((n_items, k))
        genre_mix[np.arange(n_items), main] += 0.75
        genre_mix[np.arange(n_items), second] += 0.25
        quality = rng.normal(0.0, 0.45, size=n_items)
        popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
        popularity = popularity[rng.permutation(n_items)]
        item_ids = [f"{spec['prefix']}{d_index:01d}{i:07d}" for i in range(n_items)]

        # Each domain sees the shared taste through its own small twist.
        domain_taste = taste + rng.normal(0.0, 0.35, size=taste.shape)
        domain_bias = bias + rng.normal(0.0, 0.15, size=n_users)
        affinity = domain_taste @ genre_mix.T  # (users, items)

        reviews = io.BytesIO()
        with gzip.GzipFile(fileobj=reviews, mode="wb", mtime=0) as gz:
            n_rows = 0
            for u in range(n_users):
                if domain not in user_domains[u]:
                    continue
                n = int(rng.integers(min_per_user, max_per_user + 1))
                weights = popularity * np.exp(1.2 * affinity[u])
                picked = rng.choice(
                    n_items, size=min(n, n_items), replace=False, p=weights / weights.sum()
                )
                score = 3.9 + domain_bias[u] + quality[picked] + 0.55 * affinity[u, picked]
                score += rng.normal(0.0, rating_noise, size=len(picked))
                ratings = np.clip(np.rint(score), 1, 5)
                times = rng.integers(1_546_300_800_000, 1_735_689_600_000, size=len(picked))
                for i, r, t in zip(picked, ratings, times, strict=True):
                    record = {
                        "rating": float(r),
                        "title": _review_title(float(r)),
                        "text": _review_text(rng, float(r), GENRE_NAMES[main[i]], spec),
                        "images": [],
                        "asin": item_ids[i],
                        "parent_asin": item_ids[i],
                        "user_id": user_ids[u],
                        "timestamp": int(t),
                        "helpful_vote": int(rng.integers(0, 5)),
                        "verified_purchase": True,
                    }
                    gz.write((json.dumps(record) + "\n").encode())
                    n_rows += 1
        counts[domain] = n_rows

        meta = io.BytesIO()
        with gzip.GzipFile(fileobj=meta, mode="wb", mtime=0) as gz:
            for i in range(n_items):
                record = _item_record(rng, spec, item_ids[i], main[i], second[i], quality[i])
                if image_base_url:
                    url = f"{image_base_url.rstrip('/')}/{domain}/images/{item_ids[i]}.png"
                    record["images"] = [
                        {"thumb": url, "large": url, "hi_res": None, "variant": "MAIN"}
                    ]
                    # Own per-item generator: the catalogue's rng draws the same with or without.
                    png = draw_item_image(
                        GENRE_NAMES[main[i]],
                        GENRE_NAMES[second[i]],
                        float(quality[i]),
                        item_seed(seed, domain, item_ids[i]),
                    )
                    write_bytes(png, out_dir / domain / "images" / f"{item_ids[i]}.png")
                gz.write((json.dumps(record) + "\n").encode())

        write_bytes(reviews.getvalue(), out_dir / domain / "reviews.jsonl.gz")
        write_bytes(meta.getvalue(), out_dir / domain / "meta.jsonl.gz")

    return Catalogue(taste, bias, user_domains, counts)


def _item_record(rng, spec, item_id, main, second, quality) -> dict:
    genre, other = GENRE_NAMES[main], GENRE_NAMES[second]
    words = GENRES[genre]
    noun = spec["nouns"][int(rng.integers(len(spec["nouns"])))]
    title = f"The {TITLE_ADJ[int(rng.integers(len(TITLE_ADJ)))]} {words[int(rng.integers(len(words)))].title()}"
    picks = rng.choice(len(words), size=3, replace=False)
    praise = (
        PRAISE if quality > 0.3 else PLAIN if quality < -0.3 else ["solid", "steady", "classic"]
    )
    first = f"A {praise[int(rng.integers(len(praise)))]} {genre} {noun} of {words[picks[0]]} and {words[picks[1]]}."
    mood = f"It {spec['verbs'][int(rng.integers(len(spec['verbs'])))]} a {words[picks[2]]} story"
    if other != genre:
        mood += f" with a touch of {other} ({GENRES[other][int(rng.integers(len(GENRES[other])))]})"
    description = [first, mood + "."]
    categories = [spec["category"], genre.title()] + ([other.title()] if other != genre else [])
    return {
        "main_category": spec["category"],
        "title": title,
        "average_rating": None,
        "rating_number": None,
        "features": [f"Genre: {genre}"],
        "description": description,
        "price": round(float(rng.uniform(3, 30)), 2),
        "images": [],
        "videos": [],
        "store": f"{genre.title()} House",
        "categories": categories,
        "details": {},
        "parent_asin": item_id,
    }


def _review_title(rating: float) -> str:
    return {1: "Not for me", 2: "Disappointing", 3: "It was fine", 4: "Really good", 5: "Loved it"}[
        int(rating)
    ]


def _review_text(rng, rating: float, genre: str, spec: dict) -> str:
    noun = spec["nouns"][int(rng.integers(len(spec["nouns"])))]
    feeling = "enjoyed" if rating >= 4 else "did not enjoy" if rating <= 2 else "was lukewarm about"
    return f"I {feeling} this {genre} {noun}."
