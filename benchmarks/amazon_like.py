"""Amazon-Reviews-2023-shaped files at full size, for the data benchmark (deterministic, offline).

    python -m benchmarks.amazon_like --out /tmp/amazon_like --rows 20000000 [--seed 0]

Writes the layout a ``download.base_url`` mirror has (``file://<out>``):
``review_categories/<Category>.jsonl.gz`` and ``meta_categories/meta_<Category>.jsonl.gz`` for
Books and Movies_and_TV, plus ``truth.json`` (what was generated: rows, users, items, and every
kind of damage injected, to check ``prepare``'s statistics against).

The shape follows the real 2023 release (Books: 29.5M reviews, 10.3M users, 4.4M items;
Movies_and_TV: 17.3M reviews, 6.5M users, 0.75M items), scaled to ``--rows``:

- rows split between the categories as in the release, users and items per row as there;
- long tails: a user's number of reviews is Zipf-distributed (most users write one, a few
  thousands), items are drawn with Zipf popularity; part of the users review in both;
- the lines look like the release's (same keys and order, ids of the same form, review
  title and text of log-normal length, helpful votes, images), in random order;
- the mess of the real files: repeated (user, item) pairs (same or another rating), lines
  without a timestamp, truncated JSON lines, lines without ``user_id`` or ``rating``, ratings
  out of range, lines that are not UTF-8, blank lines; in the metadata: items without a record,
  items listed twice, missing titles, empty descriptions and categories, prices as text or null.
  The bad lines stay well within ``prepare.max_bad_fraction`` (0.1 %).

Everything is vectorised (numpy draws, polars string building); each chunk of lines becomes
its own gzip member (members one after the other are one valid gzip file), compressed on a
thread pool.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

CHUNK = 500_000  # lines per gzip member (bounds the generator's memory)
MS_1997 = 852_076_800_000
MS_2023 = 1_694_000_000_000
YEAR_MS = 365.25 * 86_400_000
ID_ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", dtype=np.uint8)
DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)
ALNUM = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
NOT_UTF8 = "\x01"  # written as bytes that are not UTF-8 (no JSON line holds a raw \x01)


@dataclass(frozen=True)
class Category:
    name: str
    share: float  # of all review lines (Books 29.5M, Movies_and_TV 17.3M)
    reviews_per_user: float  # in the release: 2.86, 2.66
    reviews_per_item: float  # 6.7, 23.1
    degree_exponent: float  # Zipf exponent of reviews per user (gives the mean above)
    popularity_exponent: float  # Zipf exponent of item popularity
    isbn_share: float  # item ids that are ISBN-10 digits rather than B0... ASINs
    path: tuple[str, ...]  # category path of its metadata


CATEGORIES = (
    Category("Books", 29.5 / 46.8, 2.86, 6.7, 2.23, 0.9, 0.7, ("Books", "Literature & Fiction")),
    Category("Movies_and_TV", 17.3 / 46.8, 2.66, 23.1, 2.28, 0.9, 0.0, ("Movies & TV", "Genre")),
)
OVERLAP = 0.3  # share of a Movies_and_TV reviewer's ids also reviewing Books


@dataclass(frozen=True)
class Mess:
    """Share of review lines (or metadata records) of each kind of damage."""

    duplicate: float = 0.01  # a (user, item) pair that already has a line
    no_timestamp: float = 0.001  # "timestamp" missing: kept, event_timestamp null
    truncated: float = 0.0002  # cut mid-line: malformed JSON
    no_user: float = 0.0001  # "user_id" missing
    no_rating: float = 0.0001  # "rating" missing
    bad_rating: float = 0.00005  # "rating": 0.0
    not_utf8: float = 0.00001
    blank: float = 0.00001  # empty lines (not records)
    meta_missing: float = 0.03  # reviewed items without a metadata record
    meta_twice: float = 0.005  # items listed twice in the metadata
    meta_truncated: float = 0.0002


VOCABULARY = (
    "the a and of to it is was this that book movie story read watch great good love loved "
    "characters plot ending series author film actor acting season episode recommend wonderful "
    "boring slow fast page pages classic favorite family kids fun enjoyed really very much "
    "well written beautiful sad funny dark world time life people again first second never "
    "always best worst quality price delivery dvd blu-ray edition copy cover print kindle"
)
WORDS = VOCABULARY.split()
ODD = ('she said \\"wow\\"', "caf\\u00e9", "5/5 <br />", "na\u00efve", "\\n\\nupdate:", "100%")


def _ids(rng: np.random.Generator, n: int, kind: str, isbn_share: float = 0.0) -> pa.Array:
    """``n`` distinct-looking ids: users ``A`` + 27 base32 chars, items ISBN-10 or ``B0`` +
    8 alphanumerics (collisions among 10^12 values are left as they fall: real ids repeat
    across variants too)."""
    if kind == "user":
        raw = np.empty((n, 28), dtype=np.uint8)
        raw[:, 0] = ord("A")
        raw[:, 1:] = ID_ALPHABET[rng.integers(0, 32, (n, 27))]
    else:
        raw = np.empty((n, 10), dtype=np.uint8)
        raw[:, :2] = np.frombuffer(b"B0", dtype=np.uint8)
        raw[:, 2:] = ALNUM[rng.integers(0, 36, (n, 8))]
        isbn = rng.random(n) < isbn_share
        raw[isbn] = DIGITS[rng.integers(0, 10, (int(isbn.sum()), 10))]
    width = raw.shape[1]
    return pa.array(raw.view(f"S{width}").ravel()).cast(pa.string())


def _texts(rng: np.random.Generator, n: int, mean_words: float, sigma: float) -> pl.Series:
    """``n`` pieces of JSON-escaped text of log-normal word counts (the pool lines draw from)."""
    lengths = np.maximum(1, rng.lognormal(np.log(mean_words), sigma, n).astype(int))
    words = np.array(WORDS + list(ODD), dtype=object)
    p = np.r_[np.full(len(WORDS), 0.999 / len(WORDS)), np.full(len(ODD), 0.001 / len(ODD))]
    flat = rng.choice(words, size=int(lengths.sum()), p=p)
    cuts = np.cumsum(lengths)[:-1]
    return pl.Series([" ".join(w) for w in np.split(flat, cuts)], dtype=pl.String)


def _degrees(rng: np.random.Generator, rows: int, exponent: float) -> np.ndarray:
    """Reviews per user, Zipf-distributed, summing to ``rows`` exactly."""
    # The release's most prolific reviewers write thousands: about 1 in 5,000 of the lines.
    d = np.minimum(rng.zipf(exponent, rows), max(100, rows // 5000))
    n_users = int(np.searchsorted(np.cumsum(d), rows)) + 1
    d = d[:n_users]
    d[-1] -= int(d.sum()) - rows
    return d


def _zipf_draws(rng: np.random.Generator, n_pool: int, n: int, exponent: float) -> np.ndarray:
    """``n`` indices into a pool of ``n_pool``, the k-th most popular drawn ~ (k + 50)**-exponent
    (Zipf-Mandelbrot: the offset keeps the top item near the release's 0.1 to 0.5 % of the
    lines); which index is how popular is itself random."""
    cdf = np.cumsum((np.arange(1, n_pool + 1, dtype=np.float64) + 50) ** -exponent)
    rank = np.searchsorted(cdf, rng.random(n) * cdf[-1])
    return rng.permutation(n_pool)[np.minimum(rank, n_pool - 1)].astype(np.int64)


def _write(path: Path, chunks, level: int) -> int:
    """Write an iterator of text chunks as consecutive gzip members; return the bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def pack(text: str) -> bytes:
        data = text.encode().replace(NOT_UTF8.encode(), b"\xff\xfe")
        z = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: a gzip member (mtime 0)
        return z.compress(data) + z.flush()

    size = 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh, ThreadPoolExecutor(2) as pool:
        pending = []
        for text in chunks:
            pending.append(pool.submit(pack, text))
            if len(pending) >= 3:
                size += fh.write(pending.pop(0).result())
        for fut in pending:
            size += fh.write(fut.result())
    tmp.replace(path)
    return size


def _lines(frame: pl.DataFrame, fields: list[pl.Expr]) -> str:
    """JSON lines from ``key: value`` fragments (a null fragment leaves its key out)."""
    line = pl.concat_str(fields, separator=", ", ignore_nulls=True)
    out = frame.select(line=pl.concat_str(pl.lit("{"), line, pl.lit("}")))
    return _damage(out, frame)


def _damage(out: pl.DataFrame, frame: pl.DataFrame) -> str:
    """Truncate, garble or blank the lines the frame's ``mess`` column names; text of the chunk."""
    mess = frame["mess"]
    line = pl.col("line")
    cut = (pl.col("cut") * line.str.len_chars()).cast(pl.Int64).clip(1)
    out = out.with_columns(mess=mess, cut=frame["cut"]).select(
        pl.when(pl.col("mess") == "truncated")
        .then(line.str.slice(0, cut))
        .when(pl.col("mess") == "not_utf8")
        .then(pl.concat_str(pl.lit(NOT_UTF8), line))
        .when(pl.col("mess") == "blank")
        .then(pl.lit(""))
        .otherwise(line)
    )
    return "\n".join(out.to_series().to_list()) + "\n"


def _frag(key: str, value: pl.Expr, quoted: bool = False) -> pl.Expr:
    q = '"' if quoted else ""
    return pl.concat_str(pl.lit(f'"{key}": {q}'), value, pl.lit(q))


def _mess_labels(rng: np.random.Generator, n: int, shares: dict[str, float]) -> np.ndarray:
    u = rng.random(n)
    labels = np.full(n, "", dtype=object)
    lo = 0.0
    for name, share in shares.items():
        labels[(u >= lo) & (u < lo + share)] = name
        lo += share
    return labels


def review_chunks(cat: Category, rows: int, users: pa.Array, user_of_row, item_ids: pa.Array,
                  item_of_row, seed: np.random.SeedSequence, mess: Mess, counts: dict):  # fmt: skip
    """The review lines of one category, a chunk of text at a time."""
    rng = np.random.default_rng(seed)
    titles = _texts(rng, 4096, 4, 0.6)
    texts = _texts(rng, 65_536, 30, 0.9)
    kinds = {
        "truncated": mess.truncated,
        "no_user": mess.no_user,
        "no_rating": mess.no_rating,
        "bad_rating": mess.bad_rating,
        "not_utf8": mess.not_utf8,
        "blank": mess.blank,
        "no_timestamp": mess.no_timestamp,
    }
    ratings = np.array(["1.0", "2.0", "3.0", "4.0", "5.0"])
    for lo in range(0, rows, CHUNK):
        n = min(CHUNK, rows - lo)
        labels = _mess_labels(rng, n, kinds)
        for k in kinds:
            counts[k] = counts.get(k, 0) + int((labels == k).sum())
        age = rng.exponential(4 * YEAR_MS, n)
        ts = np.maximum(MS_2023 - age, MS_1997).astype(np.int64)
        star = rng.choice(5, n, p=[0.07, 0.05, 0.09, 0.17, 0.62])
        item = pl.from_arrow(item_ids.take(pa.array(item_of_row[lo : lo + n])))
        variant = rng.random(n) < 0.1  # a variant's asin differs from its parent_asin
        frame = pl.DataFrame(
            {
                "user": pl.from_arrow(users.take(pa.array(user_of_row[lo : lo + n]))),
                "item": item,
                "rating": np.where(labels == "bad_rating", "0.0", ratings[star]),
                "ts": ts,
                "title": titles.gather(rng.integers(0, len(titles), n)),
                "text": texts.gather(rng.integers(0, len(texts), n)),
                "votes": rng.zipf(2.5, n) - 1,
                "verified": np.where(rng.random(n) < 0.8, "true", "false"),
                "variant": variant,
                "image": rng.random(n) < 0.02,
                "mess": labels.astype(str),
                "cut": rng.uniform(0.05, 0.95, n),
            }
        )
        col, mess_is = pl.col, pl.col("mess")
        asin = pl.when(col("variant")).then(pl.concat_str(pl.lit("B0V"), col("item").str.slice(3)))
        image = '[{"small_image_url": "https://m.media-amazon.com/images/I/71x.jpg", "attachment_type": "IMAGE"}]'
        fields = [
            pl.when(mess_is != "no_rating").then(_frag("rating", col("rating"))),
            _frag("title", col("title"), quoted=True),
            _frag("text", col("text"), quoted=True),
            _frag("images", pl.when(col("image")).then(pl.lit(image)).otherwise(pl.lit("[]"))),
            _frag("asin", asin.otherwise(col("item")), quoted=True),
            _frag("parent_asin", col("item"), quoted=True),
            pl.when(mess_is != "no_user").then(_frag("user_id", col("user"), quoted=True)),
            pl.when(mess_is != "no_timestamp").then(_frag("timestamp", col("ts").cast(pl.String))),
            _frag("helpful_vote", col("votes").cast(pl.String)),
            _frag("verified_purchase", col("verified")),
        ]
        yield _lines(frame, fields)


def meta_chunks(cat: Category, item_ids: pa.Array, listed: np.ndarray,
                seed: np.random.SeedSequence, mess: Mess, counts: dict):  # fmt: skip
    """The metadata lines of one category: the items in ``listed`` order."""
    rng = np.random.default_rng(seed)
    titles = _texts(rng, 65_536, 6, 0.5)
    descriptions = _texts(rng, 16_384, 60, 0.8)
    stores = _texts(rng, 4096, 2, 0.3)
    genres = np.array(["Fantasy", "Mystery", "Romance", "History", "Horror", "Comedy", "Drama"])
    path = ", ".join(f'"{p}"' for p in cat.path)
    for lo in range(0, len(listed), CHUNK):
        n = min(CHUNK, len(listed) - lo)
        labels = _mess_labels(rng, n, {"truncated": mess.meta_truncated})
        counts["meta_truncated"] = counts.get("meta_truncated", 0) + int((labels != "").sum())
        item = pl.from_arrow(item_ids.take(pa.array(listed[lo : lo + n])))
        price_kind = rng.choice(4, n, p=[0.55, 0.3, 0.1, 0.05])  # number, null, "$x", "None"
        price = np.round(rng.lognormal(2.5, 0.7, n), 2)
        frame = pl.DataFrame(
            {
                "item": item,
                "title": titles.gather(rng.integers(0, len(titles), n)),
                "has_title": rng.random(n) >= 0.02,
                "description": descriptions.gather(rng.integers(0, len(descriptions), n)),
                "has_description": rng.random(n) >= 0.4,
                "store": stores.gather(rng.integers(0, len(stores), n)),
                "genre": genres[rng.integers(0, len(genres), n)],
                "has_categories": rng.random(n) >= 0.2,
                "n_images": rng.choice(4, n, p=[0.05, 0.6, 0.25, 0.1]),
                "price_kind": price_kind,
                "price": price,
                "avg": np.round(rng.uniform(2.5, 5.0, n), 1),
                "n_ratings": rng.zipf(1.8, n),
                "mess": labels.astype(str),
                "cut": rng.uniform(0.05, 0.95, n),
            }
        )
        col = pl.col
        url = pl.concat_str(pl.lit("https://m.media-amazon.com/images/I/"), col("item"))
        one_image = pl.concat_str(
            pl.lit('{"thumb": "'), url, pl.lit('._SS40_.jpg", "large": "'), url,
            pl.lit('.jpg", "variant": "MAIN", "hi_res": null}'),
        )  # fmt: skip
        images = (
            pl.when(col("n_images") == 0)
            .then(pl.lit("[]"))
            .otherwise(pl.concat_str(pl.lit("["), one_image.repeat_by(col("n_images")).list.join(", "), pl.lit("]")))
        )  # fmt: skip
        price_value = (
            pl.when(col("price_kind") == 0)
            .then(col("price").cast(pl.String))
            .when(col("price_kind") == 1)
            .then(pl.lit("null"))
            .when(col("price_kind") == 2)
            .then(pl.concat_str(pl.lit('"$'), col("price").cast(pl.String), pl.lit('"')))
            .otherwise(pl.lit('"None"'))
        )
        fields = [
            _frag("main_category", pl.lit(cat.path[0]), quoted=True),
            pl.when(col("has_title")).then(_frag("title", col("title"), quoted=True)),
            _frag("average_rating", col("avg").cast(pl.String)),
            _frag("rating_number", col("n_ratings").cast(pl.String)),
            _frag("features", pl.lit("[]")),
            _frag(
                "description",
                pl.when(col("has_description"))
                .then(pl.concat_str(pl.lit('["'), col("description"), pl.lit('"]')))
                .otherwise(pl.lit("[]")),
            ),
            _frag("price", price_value),
            _frag("images", images),
            _frag("videos", pl.lit("[]")),
            _frag("store", col("store"), quoted=True),
            _frag(
                "categories",
                pl.when(col("has_categories"))
                .then(pl.concat_str(pl.lit(f'[{path}, "'), col("genre"), pl.lit('"]')))
                .otherwise(pl.lit("[]")),
            ),
            _frag("details", pl.lit('{"Language": "English"}')),
            _frag("parent_asin", col("item"), quoted=True),
            _frag("bought_together", pl.lit("null")),
        ]
        yield _lines(frame, fields)


def generate(out: Path, rows: int, seed: int = 0, level: int = 1, mess: Mess = Mess()) -> dict:
    """Write the mirror under ``out``; return what was generated (also ``out/truth.json``)."""
    root = np.random.SeedSequence(seed)
    s_users, s_rows, *s_cats = root.spawn(2 + 2 * len(CATEGORIES))
    rng = np.random.default_rng(s_rows)
    plan = []
    for cat in CATEGORIES:
        n_rows = int(round(rows * cat.share))
        degrees = _degrees(rng, n_rows, cat.degree_exponent)
        plan.append((cat, n_rows, degrees))
    # One pool of user ids: Books users first, a share of the Movies users among them.
    n_books, n_movies = len(plan[0][2]), len(plan[1][2])
    n_shared = int(OVERLAP * n_movies)
    users = _ids(np.random.default_rng(s_users), n_books + n_movies - n_shared, "user")
    shared = rng.choice(n_books, n_shared, replace=False)
    user_base = {
        "Books": np.arange(n_books),
        "Movies_and_TV": np.r_[shared, n_books + np.arange(n_movies - n_shared)],
    }
    truth = {"seed": seed, "rows": rows, "mess": asdict(mess), "categories": {}}
    started = time.perf_counter()
    for i, (cat, n_rows, degrees) in enumerate(plan):
        s_review, s_meta = s_cats[2 * i], s_cats[2 * i + 1]
        crng = np.random.default_rng(s_review.spawn(1)[0])
        n_items = max(1, int(round(n_rows / cat.reviews_per_item)))
        item_ids = _ids(crng, n_items, "item", cat.isbn_share)
        user_of_row = user_base[cat.name][
            crng.permutation(np.repeat(np.arange(len(degrees)), degrees))
        ]
        item_of_row = _zipf_draws(crng, n_items, n_rows, cat.popularity_exponent)
        dup = np.flatnonzero(crng.random(n_rows) < mess.duplicate)
        src = crng.integers(0, n_rows, len(dup))
        user_of_row[dup], item_of_row[dup] = user_of_row[src], item_of_row[src]
        counts: dict[str, int] = {"duplicate_lines_injected": len(dup)}
        reviews = out / "review_categories" / f"{cat.name}.jsonl.gz"
        size = _write(
            reviews,
            review_chunks(cat, n_rows, users, user_of_row, item_ids, item_of_row, s_review, mess, counts),
            level,
        )  # fmt: skip
        reviewed = np.unique(item_of_row)
        keep = crng.random(n_items) >= mess.meta_missing
        twice = np.flatnonzero(keep & (crng.random(n_items) < mess.meta_twice))
        listed = np.r_[np.flatnonzero(keep), twice]
        listed = listed[crng.permutation(len(listed))]
        meta_counts: dict[str, int] = {}
        meta_size = _write(
            out / "meta_categories" / f"meta_{cat.name}.jsonl.gz",
            meta_chunks(cat, item_ids, listed, s_meta, mess, meta_counts),
            level,
        )
        truth["categories"][cat.name] = {
            "review_lines": n_rows,
            "users": len(degrees),
            "items_in_pool": n_items,
            "items_reviewed": len(reviewed),
            "meta_records": len(listed),
            "meta_listed_twice": len(twice),
            "reviewed_items_without_meta": int((~keep[reviewed]).sum()),
            "reviews_bytes": size,
            "meta_bytes": meta_size,
            **counts,
            **meta_counts,
        }
    truth["shared_users"] = n_shared
    truth["seconds"] = round(time.perf_counter() - started, 1)
    (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return truth


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="mirror root to write")
    p.add_argument("--rows", type=int, default=20_000_000, help="review lines in all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--level", type=int, default=1, help="gzip level (1: fast, 6: gzip's default)")
    args = p.parse_args(argv)
    truth = generate(args.out, args.rows, args.seed, args.level)
    print(json.dumps(truth, indent=2))
    return truth


if __name__ == "__main__":
    main()
