"""params.yaml ``dataset``: which release (or the embedded sample) and which domains."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import model_validator

from pipeline.config import Section

# A domain name is a directory name under data/raw (and a label in every table).
DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class DomainSpec(Section):
    """One catalogue. Amazon releases name it by ``category``; RecBole by local files."""

    category: str | None = None  # Amazon category file name, e.g. Books, Movies_and_TV
    inter: str | None = None  # RecBole: path of the .inter file
    item: str | None = None  # RecBole: path of the .item file (optional)


class DatasetParams(Section):
    name: str = "synthetic"
    format: Literal["synthetic", "amazon2023", "amazon2018", "amazon2014", "recbole"] = "synthetic"
    domains: dict[str, DomainSpec]

    @model_validator(mode="after")
    def _check_domains(self) -> DatasetParams:
        if len(self.domains) < 2:
            raise ValueError("domains: name at least two domains (a source and a target)")
        for name, spec in self.domains.items():
            if not DOMAIN_NAME.fullmatch(name):
                raise ValueError(
                    f"domains: '{name}' is not a domain name (letters, digits, '_' and '-')"
                )
            if self.format.startswith("amazon") and not spec.category:
                raise ValueError(f"domains.{name}.category: required for format {self.format}")
            if self.format == "recbole" and not spec.inter:
                raise ValueError(f"domains.{name}.inter: required for format recbole")
        if self.format == "synthetic" and sorted(self.domains) != ["books", "movies"]:
            raise ValueError(
                f"domains: the synthetic sample has the domains books and movies, got {sorted(self.domains)}"
            )
        return self
