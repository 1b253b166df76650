"""params.yaml ``download``: where release files come from and how they are fetched."""

from __future__ import annotations

from pydantic import Field

from pipeline.config import Section


class DownloadParams(Section):
    base_url: str | None = None  # mirror root (http(s):// or file://); null = public release
    reviews_template: str | None = None  # path under base_url, {category}; null = release default
    meta_template: str | None = None
    with_metadata: bool = True
    retries: int = Field(5, ge=0)
    backoff_seconds: float = Field(1.0, ge=0)
    timeout_seconds: float = Field(60.0, gt=0)
