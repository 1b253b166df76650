"""The text encoder's input for an item: ``title. categories. description``, made plain and cut.

Shop text carries HTML tags and entities, control characters and runs of spaces; they are
removed. Categories come before the description so that a cut shortens the (long, least dense)
description first. :func:`text_hash` of the exact input is the feature store's cache key.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Sequence
from typing import Any

_TAG = re.compile(r"<[^>]{0,200}>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")
_SPACE = re.compile(r"\s+")


def clean_text(value: Any) -> str:
    """Shop text made plain: HTML tags and entities, control characters and runs of spaces out."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        value = " ".join(str(v) for v in value if v)
    text = str(value)
    if "<" in text:
        text = _TAG.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
    return _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()


def item_text(
    title: str | None, description: str | None, categories: Sequence[str] | None, max_chars: int
) -> str:
    """The text encoder's input: ``title. categories. description``, cut to ``max_chars``.

    Empty parts are left out; no part at all gives ``""``.
    """
    cats = [clean_text(c) for c in (categories or [])]
    parts = [clean_text(title), ", ".join(c for c in cats if c), clean_text(description)]
    return cut(". ".join(p.rstrip(". ") for p in parts if p.rstrip(". ")), max_chars)


def cut(text: str, max_chars: int) -> str:
    """``text`` shortened to ``max_chars``, at a space when one is near the end."""
    if len(text) <= max_chars:
        return text
    space = text.rfind(" ", 0, max_chars + 1)
    return text[: space if space > max_chars // 2 else max_chars].rstrip()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
