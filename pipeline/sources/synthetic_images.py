"""Item pictures for the embedded sample, drawn so that an image encoder has something to see.

Each picture carries the item's genres and quality the way its title and description carry them
in words: the background colour is set by the main genre, the motif drawn over it by the second
genre (the main genre again for single-genre items), and the quality sets the brightness and the
width of a light frame. A little seeded jitter and pixel noise make every item's picture
distinct. The bytes depend only on the arguments, so the sample stays byte-for-byte
reproducible; the drawing uses its own random generator, never the catalogue's.
"""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
from PIL import Image, ImageDraw

# Background colour per genre (RGB).
COLOURS = {
    "fantasy": (96, 62, 150),
    "mystery": (38, 52, 74),
    "romance": (206, 92, 124),
    "science fiction": (28, 96, 158),
    "history": (156, 114, 62),
    "horror": (72, 18, 20),
    "comedy": (236, 188, 48),
    "adventure": (46, 134, 74),
}
# Motif per genre, drawn for the second genre.
MOTIFS = {
    "fantasy": "stars",
    "mystery": "rings",
    "romance": "hearts",
    "science fiction": "grid",
    "history": "columns",
    "horror": "zigzag",
    "comedy": "dots",
    "adventure": "mountains",
}
MOTIF_NAMES = sorted(set(MOTIFS.values()))


def item_seed(seed: int, domain: str, item_id: str) -> int:
    """A per-item seed from the sample's seed, stable across processes and platforms."""
    digest = hashlib.sha256(f"{seed}/{domain}/{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def draw_item_image(
    genre: str, second_genre: str, quality: float, seed: int, size: int = 96
) -> bytes:
    """A ``size`` x ``size`` RGB PNG for an item; the same arguments give the same bytes."""
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    rng = np.random.default_rng(seed)
    # Quality is about N(0, 0.45) in the sample: map it smoothly to [0.6, 1.4] brightness.
    light = 1.0 + 0.4 * math.tanh(quality / 0.45)
    background = _shade(_colour(genre), light)
    ink = _shade(_contrast(_colour(second_genre)), light)

    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    _MOTIF_DRAWERS[_motif(second_genre)](draw, size, ink, rng)
    frame = max(0, round(size / 32 * (1.0 + math.tanh(quality / 0.45))))  # 0 .. size/16
    if frame:
        draw.rectangle(
            [0, 0, size - 1, size - 1], outline=_shade((235, 225, 200), light), width=frame
        )

    pixels = np.asarray(image, dtype=np.int16)
    pixels = pixels + rng.normal(0.0, 3.0, size=pixels.shape).round().astype(np.int16)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=6)
    return out.getvalue()


# --------------------------------------------------------------------------- colours
def _colour(genre: str) -> tuple[int, int, int]:
    if genre in COLOURS:
        return COLOURS[genre]
    digest = hashlib.sha256(genre.encode()).digest()  # an unknown genre still gets a fixed colour
    return digest[0], digest[1], digest[2]


def _motif(genre: str) -> str:
    if genre in MOTIFS:
        return MOTIFS[genre]
    digest = hashlib.sha256(genre.encode()).digest()
    return MOTIF_NAMES[digest[3] % len(MOTIF_NAMES)]


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, round(c * factor))) for c in rgb)
    return r, g, b


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The motif colour: the genre colour pushed towards white (dark) or black (light)."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    target = 0 if luma > 140 else 255
    r, g, b = (round(c + 0.6 * (target - c)) for c in rgb)
    return r, g, b


# --------------------------------------------------------------------------- motifs
def _jitter(rng: np.random.Generator, size: int) -> float:
    return float(rng.uniform(-size / 24, size / 24))


def _stars(draw: ImageDraw.ImageDraw, size: int, ink, rng) -> None:
    for _ in range(5):
        cx, cy = rng.uniform(0.15 * size, 0.85 * size, size=2)
        r = float(rng.uniform(0.06, 0.12)) * size
        points = []
        for k in range(10):
            angle = math.pi / 2 + k * math.pi / 5
            radius = r if k % 2 == 0 else r * 0.45
            points.append((cx + radius * math.cos(angle), cy - radius * math.sin(angle)))
        draw.polygon(points, fill=ink)


def _rings(draw: ImageDraw.ImageDraw, size: int, ink, rng) -> None:
    cx, cy = size / 2 + _jitter(rng, size), size / 2 + _jitter(rng, size)
    width = max(1, size // 32)
    for step in range(1, 5):
        r = step * size / 10
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=ink, width=width)


def _hearts(draw: ImageDraw.ImageDraw, size: int, ink, rng) -> None:
    for _ in range(3):
        cx, cy = rng.uniform(0.25 * size, 0.75 * size, size=2)
        r = float(rng.uniform(0.07, 0.11)) * size
        draw.ellipse([cx - 2 * r, cy - r, cx, cy + r], fill=ink)
        draw.ellipse([cx, cy - r, cx + 2 * r, cy + r], fill=ink)
        draw.polygon(
            [(cx - 2 * r, cy + 0.2 * r), (cx + 2 * r, cy + 0.2 * r), (cx, cy + 2.4 * r)], fill=ink
        )


def _grid(draw: ImageDraw.ImageDraw, size: int, ink, rng) -> None:
    step = size / 6
    off = _jitter(rng, size) / 2
    r = max(1.0, size / 40)
    for i in range(1, 6):
        for j in range(1, 6):
            x, y = i * step + off, j * step + off
            draw.rectangle([x - r, y - r, x + r, y + r], fill=ink)


def _columns(draw: ImageDraw.ImageDraw, size: int, ink, rng) -> None:
    n = 4
    width = size / (2 * n + 1)
    top = size * float(rng.uniform(0.15, 0.3))
    for i in range(n):
        x = (2 * i + 1) * width
        draw.rectangle([x, top, x + width, size * 0.85], fill=ink)
    draw.rectangle([width * 0.5, top - size / 16, size - width * 0.5, top], fill=ink)


def _zigzag(draw: ImageDraw.ImageDraw, size: int, ink, rng) -> None:
    width = max(1, size // 24)
    for row in range(3):
        y = (row + 1) * size / 4 + _jitter(rng, size) / 2
        amp = size / 12
        points = [(x * size / 8, y + (amp if x % 2 else -amp)) for x in range(9)]
        draw.line(points, fill=ink, width=width)


def _dots(draw: ImageDraw.ImageDraw, size: int, ink, rng) -> None:
    for _ in range(9):
        cx, cy = rng.uniform(0.1 * size, 0.9 * size, size=2)
        r = float(rng.uniform(0.04, 0.09)) * size
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=ink)


def _mountains(draw: ImageDraw.ImageDraw, size: int, ink, rng) -> None:
    base = size * 0.85
    for _ in range(3):
        cx = float(rng.uniform(0.15, 0.85)) * size
        half = float(rng.uniform(0.15, 0.3)) * size
        peak = base - float(rng.uniform(0.35, 0.6)) * size
        draw.polygon([(cx - half, base), (cx + half, base), (cx, peak)], fill=ink)


_MOTIF_DRAWERS = {
    "stars": _stars,
    "rings": _rings,
    "hearts": _hearts,
    "grid": _grid,
    "columns": _columns,
    "zigzag": _zigzag,
    "dots": _dots,
    "mountains": _mountains,
}
