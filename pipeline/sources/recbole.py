"""RecBole atomic files: ``.inter`` (interactions) and ``.item`` (item features).

Tab-separated with a header of ``name:type`` fields (``user_id:token``, ``rating:float``,
``categories:token_seq``); headers without the ``:type`` suffix are accepted too, as are
``.inter`` files without a rating column (implicit feedback: ``rating`` is null) or without a
timestamp. Columns are found by name, so their order does not matter.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from pipeline.errors import DamageLog, InputError
from pipeline.schemas import RAW_INTERACTION, RAW_ITEM
from pipeline.sources.lines import (
    BadField,
    batches,
    iter_lines,
    price_value,
    rating_value,
    text_value,
    timestamp_value,
)

log = logging.getLogger("prepare")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")

# Accepted spellings of the columns the pipeline needs, in order of preference.
USER_COLUMNS = ("user_id", "uid", "user")
ITEM_COLUMNS = ("item_id", "iid", "item", "asin", "parent_asin")
RATING_COLUMNS = ("rating", "score", "overall")
TIME_COLUMNS = ("timestamp", "time", "unixreviewtime")


def _header(path: Path, damage: DamageLog) -> tuple[Iterator[tuple[int, str]], dict[str, int]]:
    lines = iter_lines(path, damage)
    try:
        _, first = next(lines)
    except StopIteration:
        raise InputError("file is empty (no header line)", path=path, line=1) from None
    first = first.removeprefix("\ufeff")  # a byte-order mark (Excel, Windows exports)
    names = [name.split(":", 1)[0].strip().lower() for name in first.rstrip("\r\n").split("\t")]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"the header repeats the column(s) {repeated}", path=path, line=1)
    return lines, {name: i for i, name in enumerate(names)}


def _find(columns: dict[str, int], candidates: tuple[str, ...]) -> int | None:
    return next((columns[c] for c in candidates if c in columns), None)


def _rows(lines: Iterator[tuple[int, str]], width: int, damage: DamageLog):
    padded, first = 0, None
    for number, text in lines:
        fields = text.rstrip("\r\n").split("\t")
        if len(fields) < width:
            # Trailing empty fields are sometimes trimmed; pad them back, and say so (a line cut
            # short reads the same way).
            fields += [""] * (width - len(fields))
            padded, first = padded + 1, first or number
        elif len(fields) > width:
            damage.skip(number, None, f"{len(fields)} fields, header has {width}", "bad_row")
            continue
        yield number, fields
    if padded:
        log.warning(
            "%s: %d line(s) had fewer fields than the header; the missing trailing fields were "
            "read as empty (first: line %d)",
            damage.path,
            padded,
            first,
        )


def read_inter(path: str | Path, damage: DamageLog) -> Iterator[pa.RecordBatch]:
    path = Path(path)
    lines, columns = _header(path, damage)
    user, item = _find(columns, USER_COLUMNS), _find(columns, ITEM_COLUMNS)
    if user is None or item is None:
        raise InputError(
            f"header needs user_id and item_id columns, found {sorted(columns)}", path=path, line=1
        )
    rating, when = _find(columns, RATING_COLUMNS), _find(columns, TIME_COLUMNS)
    if rating is None:  # implicit feedback, or a misspelt column: say which
        log.warning(
            "%s: no rating column (%s) in the header %s: read as implicit feedback",
            path,
            " / ".join(RATING_COLUMNS),
            sorted(columns, key=columns.get),
        )
    rating_name = next((c for c in RATING_COLUMNS if c in columns), "rating")

    def extract(fields: list[str]) -> tuple:
        user_id, item_id = fields[user].strip(), fields[item].strip()
        if not user_id:
            raise BadField("user_id", "missing or empty", "missing_field")
        if not item_id:
            raise BadField("item_id", "missing or empty", "missing_field")
        value = None
        if rating is not None:
            value = rating_value(fields[rating].strip() or None, rating_name)
        stamp = (
            timestamp_value(fields[when].strip(), "timestamp", "s") if when is not None else None
        )
        return user_id, item_id, value, stamp

    return batches(
        _rows(lines, len(columns), damage), extract, RAW_INTERACTION, damage, with_line=True
    )


def read_item(path: str | Path, damage: DamageLog) -> Iterator[pa.RecordBatch]:
    path = Path(path)
    lines, columns = _header(path, damage)
    item = _find(columns, ITEM_COLUMNS)
    if item is None:
        raise InputError(
            f"header needs an item_id column, found {sorted(columns)}", path=path, line=1
        )
    title = _find(columns, ("title", "item_name", "name"))
    description = _find(columns, ("description", "desc"))
    categories = _find(columns, ("categories", "category", "genre", "genres"))
    brand = _find(columns, ("brand", "store"))
    price = _find(columns, ("price",))
    images = _find(columns, ("image_urls", "imurl", "image_url", "images"))

    def get(fields: list[str], index: int | None) -> str | None:
        return fields[index] if index is not None else None

    def extract(fields: list[str]) -> tuple:
        item_id = fields[item].strip()
        if not item_id:
            raise BadField("item_id", "missing or empty", "missing_field")
        return (
            item_id,
            text_value(get(fields, title)),
            text_value(get(fields, description)),
            token_seq(get(fields, categories)),
            token_seq(get(fields, images)),
            text_value(get(fields, brand)),
            price_value(get(fields, price)),
        )

    return batches(_rows(lines, len(columns), damage), extract, RAW_ITEM, damage, with_line=False)


def token_seq(value: str | None) -> list[str]:
    """``'TV', 'Movies & TV'`` (quoted, as Amazon conversions write it) or ``a b c``."""
    if not value or not value.strip():
        return []
    quoted = _QUOTED.findall(value)
    tokens = quoted if quoted else value.split()
    out: list[str] = []
    for token in tokens:
        token = token.replace("\\'", "'").strip()
        if token and token not in out:
            out.append(token)
    return out
