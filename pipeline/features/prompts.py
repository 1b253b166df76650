"""Versioned prompt files of ``prompts/``: the item-caption instruction and the user-profile
template are read the same way.

A prompt file is plain text; lines starting with ``#`` are comments. Its ``id`` is the file
name (``user_profile_v1``) and its ``version`` adds a hash of the text, so an edit that forgot
to rename the file still changes the caches and metadata keyed by it. Placeholders are
Python ``str.format`` fields (``{history}``); :meth:`Prompt.load` checks that the required
ones are there.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

MIN_PHRASE_CHARS = 25  # a literal stretch at least this long is specific to the prompt


@dataclass(frozen=True)
class Prompt:
    path: Path
    text: str  # without the comment lines

    @property
    def id(self) -> str:
        return self.path.stem  # e.g. user_profile_v1

    @property
    def version(self) -> str:
        # The file name carries the version; the content hash catches silent edits.
        return f"{self.path.stem}@{hashlib.sha256(self.text.encode()).hexdigest()[:8]}"

    @classmethod
    def load(cls, path: str | Path, *, param: str, placeholders: Sequence[str] = ()) -> Prompt:
        """Read ``path`` (named by the params key ``param`` in errors)."""
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"{param}: {path} not found")
        lines = path.read_text(encoding="utf-8").splitlines()
        text = "\n".join(line for line in lines if not line.startswith("#")).strip()
        if not text:
            raise PipelineError(f"{path}: the prompt is empty")
        missing = [p for p in placeholders if "{" + p + "}" not in text]
        if missing:
            wanted = ", ".join("{" + p + "}" for p in missing)
            raise PipelineError(f"{path}: the prompt needs the placeholder(s) {wanted}")
        return cls(path, text)

    def render(self, **values: object) -> str:
        return self.text.format(**values)

    def fixed_phrases(self) -> list[str]:
        """Long literal stretches of the instructions: an output repeating one echoes the prompt."""
        parts = re.split(r"\{[a-z_]+\}|\n|[.:;!?](?:\s|$)", self.text)
        return [p.strip().lower() for p in parts if len(p.strip()) >= MIN_PHRASE_CHARS]
