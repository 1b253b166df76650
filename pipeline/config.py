"""Typed params: one pydantic model per params.yaml section, validated when a stage starts.

A typo or a bad value fails at once with a message naming the key, e.g.
``params.yaml: split.test_fracton: unknown key``. Later stages add their own sections here.
"""

from __future__ import annotations

import datetime
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.cdr.configs import METHOD_NAMES, TrainParams
from pipeline.errors import ParamsError

FORMATS = ("synthetic", "amazon2023", "amazon2018", "amazon2014", "recbole")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- dataset
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
            if self.format.startswith("amazon") and not spec.category:
                raise ValueError(f"domains.{name}.category: required for format {self.format}")
            if self.format == "recbole" and not spec.inter:
                raise ValueError(f"domains.{name}.inter: required for format recbole")
        if self.format == "synthetic" and sorted(self.domains) != ["books", "movies"]:
            raise ValueError(
                f"domains: the synthetic sample has the domains books and movies, got {sorted(self.domains)}"
            )
        return self


class DownloadParams(Section):
    base_url: str | None = None  # mirror root (http(s):// or file://); null = public release
    reviews_template: str | None = None  # path under base_url, {category}; null = release default
    meta_template: str | None = None
    with_metadata: bool = True
    retries: int = Field(5, ge=0)
    backoff_seconds: float = Field(1.0, ge=0)
    timeout_seconds: float = Field(60.0, gt=0)


class SyntheticParams(Section):
    seed: int = 7
    n_users: int = Field(1000, ge=20)
    overlap_fraction: float = Field(0.6, gt=0, le=1)  # users with history in both domains
    target_only_fraction: float = Field(0.15, ge=0, lt=1)  # side users (target domain only)
    n_items: int = Field(300, ge=20)  # per domain
    min_per_user: int = Field(8, ge=1)
    max_per_user: int = Field(40, ge=1)
    rating_noise: float = Field(0.6, ge=0)
    image_base_url: str | None = None  # where generated item images are served; null = none

    @model_validator(mode="after")
    def _check(self) -> SyntheticParams:
        if self.overlap_fraction + self.target_only_fraction > 1:
            raise ValueError("overlap_fraction + target_only_fraction must be at most 1")
        if self.min_per_user > self.max_per_user:
            raise ValueError("min_per_user must be at most max_per_user")
        return self


class PrepareParams(Section):
    duplicates: Literal["mean", "last", "max"] = "mean"  # policy for repeated (user, item) rows
    k_core: int = Field(0, ge=0)  # keep users and items with >= k interactions per domain
    max_bad_fraction: float = Field(0.001, ge=0, le=1)


class PairParams(Section):
    source: str = "books"
    target: str = "movies"

    @model_validator(mode="after")
    def _check(self) -> PairParams:
        if self.source == self.target:
            raise ValueError("source and target must be different domains")
        return self


class SplitParams(Section):
    seed: int = 2024
    test_fraction: float = Field(0.2, ge=0, lt=1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    test_users_file: str | None = None
    valid_users_file: str | None = None

    @model_validator(mode="after")
    def _check(self) -> SplitParams:
        if self.test_fraction + self.valid_fraction >= 1:
            raise ValueError("test_fraction + valid_fraction must leave training users (< 1)")
        return self


class ImagesParams(Section):
    enabled: bool = False  # fetch item images (the image encoder needs them)
    max_per_item: int = Field(1, ge=1)  # first N image URLs of an item
    workers: int = Field(16, ge=1)  # concurrent downloads
    timeout_seconds: float = Field(10.0, gt=0)
    retries: int = Field(2, ge=0)
    max_bytes: int = Field(5_000_000, ge=1)  # bigger images are recorded as too_large


class ClipParams(Section):
    model: str = "ViT-B-32"  # open_clip architecture name
    pretrained: str = (
        "openai"  # pretrained tag, local checkpoint file, local-dir:PATH or hf-hub:ORG/NAME
    )
    batch_size: int = Field(64, ge=1)


class CaptionParams(Section):
    enabled: bool = False  # multimodal-LLM caption of each item image
    model: str | None = None  # transformers vision-language model: Hub name or local directory
    prompt: str = "prompts/item_caption_v1.txt"
    max_new_tokens: int = Field(40, ge=1)
    batch_size: int = Field(8, ge=1)


class ItemFeaturesParams(Section):
    text_encoder: str = (
        "minilm"  # minilm (offline package), clip (CLIP text tower), or a Hub name / local dir
    )
    image_encoder: Literal["none", "clip"] = "none"  # "clip" needs images.enabled
    clip: ClipParams = ClipParams()
    caption: CaptionParams = CaptionParams()
    batch_size: int = Field(64, ge=1)
    max_text_chars: int = Field(1000, ge=16)  # longer text is cut (titles can be huge)
    device: str = "auto"  # auto | cpu | cuda


class UserProfilesParams(Section):
    enabled: bool = True
    backend: Literal["transformers", "openai"] = "transformers"
    model: str = "smollm2"  # "smollm2" (offline GGUF package), a Hub name or local dir; the served model for openai
    gguf_file: str | None = None  # GGUF file inside a local model directory
    endpoint: str | None = None  # OpenAI-compatible base URL (backend openai)
    template: str = "prompts/user_profile_v1.txt"
    max_items: int = Field(6, ge=1)  # history items shown to the LLM, most informative first
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(16, ge=1)
    max_retries: int = Field(1, ge=0)  # regenerations of a rejected output before the fallback
    device: str = "auto"


class ScoreParams(Section):
    """Batch top-K scoring of cold-start users (the ``score`` stage and nightly command)."""

    method: str = "auto"  # auto = best valid ndcg@10 among the trained methods, or a method name
    k: int = Field(20, ge=1)  # items per user
    chunk_size: int = Field(1024, ge=1)  # users scored at once (memory ~ chunk_size x items)
    device: str = "auto"  # auto | cpu | cuda
    steps: int | None = Field(None, ge=1)  # sampling steps of a diffusion generator; null = its own
    date: str | None = None  # partition date YYYY-MM-DD; null = today (UTC)

    @model_validator(mode="after")
    def _check(self) -> ScoreParams:
        if self.method != "auto" and self.method not in METHOD_NAMES:
            raise ValueError(f"method: expected auto or one of {list(METHOD_NAMES)}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError("device: expected auto, cpu or cuda[:N]")
        if self.date is not None:
            check_date(self.date)
        return self


def check_date(text: str, name: str = "date") -> str:
    """``text`` when it is a calendar date written YYYY-MM-DD, else a ValueError naming ``name``
    (score.date in params.yaml and the score command's ``--date``)."""
    try:
        ok = datetime.date.fromisoformat(text).isoformat() == text
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name} {text!r}: expected YYYY-MM-DD")
    return text


class Params(Section):
    """All of params.yaml. Sections that a stage does not use still have to be valid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: DatasetParams
    download: DownloadParams = DownloadParams()
    synthetic: SyntheticParams = SyntheticParams()
    prepare: PrepareParams = PrepareParams()
    pair: PairParams = PairParams()
    split: SplitParams = SplitParams()
    images: ImagesParams = ImagesParams()
    item_features: ItemFeaturesParams = ItemFeaturesParams()
    user_profiles: UserProfilesParams = UserProfilesParams()
    train: TrainParams = TrainParams()
    score: ScoreParams = ScoreParams()

    @model_validator(mode="after")
    def _check_pair(self) -> Params:
        if self.item_features.image_encoder == "clip" and not self.images.enabled:
            raise ValueError("item_features.image_encoder: 'clip' needs images.enabled: true")
        for role in ("source", "target"):
            name = getattr(self.pair, role)
            if name not in self.dataset.domains:
                known = ", ".join(sorted(self.dataset.domains))
                raise ValueError(
                    f"pair.{role}: '{name}' is not a domain in dataset.domains ({known})"
                )
        return self


def load_params(
    path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None
) -> Params:
    """Read and validate params.yaml; ``overrides`` maps dotted keys to values (tests, CLI)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path} not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return validate_params(raw, source=str(path))


def validate_params(raw: dict, source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format_errors(exc, raw, source)) from None


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def _format_errors(exc: ValidationError, raw: dict, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest(err["loc"])
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], dict):
                msg += f" (got {err['input']!r})"
        lines.append(f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def _suggest(loc: tuple) -> str:
    """'did you mean ...' for a misspelt key, looked up among the fields of its section."""
    model: Any = Params
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        model = field.annotation
    fields = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
