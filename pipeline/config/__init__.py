"""Typed params: one pydantic model per params.yaml section, validated when a stage starts.

Section ``X``'s model lives in ``pipeline/config/X.py`` (``train``'s in
:mod:`pipeline.cdr.configs`, beside the methods it configures) and is imported only when a stage
reads that section (:data:`SECTIONS`), so a stage depends on the config code of its own
sections and on this loader, nothing more.

A stage declares what it reads, ``PARAMS = ("pair", "split")`` (a dotted name such as
``"item_features.clip.model"`` declares one key of a section), and loads it with
``load_params(..., reads=PARAMS, stage=...)``: the declared sections are validated, and reading
anything else from the returned :class:`Params` raises
:class:`~pipeline.errors.UndeclaredParamError` naming the stage and the key. dvc.yaml's
``params`` of each stage equal its ``PARAMS`` (tests/test_dvc_deps.py), so every param a stage
reads re-runs it when it changes.

A typo or a bad value fails at once with a message naming the key, e.g.
``params.yaml: split.test_fracton: unknown key (did you mean 'test_fraction'?)``. An unknown
section fails every stage; the keys of a section are checked by every stage that reads it
(``load_params`` without ``reads`` checks them all, with the checks across sections).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.errors import ParamsError, UndeclaredParamError

if TYPE_CHECKING:
    from pipeline.cdr.configs import TrainParams
    from pipeline.config.dataset import DatasetParams
    from pipeline.config.download import DownloadParams
    from pipeline.config.images import ImagesParams
    from pipeline.config.item_features import ItemFeaturesParams
    from pipeline.config.pair import PairParams
    from pipeline.config.prepare import PrepareParams
    from pipeline.config.score import ScoreParams
    from pipeline.config.split import SplitParams
    from pipeline.config.synthetic import SyntheticParams
    from pipeline.config.user_profiles import UserProfilesParams

# params.yaml section -> "module:Model" that validates it (imported when a stage reads it).
SECTIONS = {
    "dataset": "pipeline.config.dataset:DatasetParams",
    "download": "pipeline.config.download:DownloadParams",
    "synthetic": "pipeline.config.synthetic:SyntheticParams",
    "prepare": "pipeline.config.prepare:PrepareParams",
    "pair": "pipeline.config.pair:PairParams",
    "split": "pipeline.config.split:SplitParams",
    "images": "pipeline.config.images:ImagesParams",
    "item_features": "pipeline.config.item_features:ItemFeaturesParams",
    "user_profiles": "pipeline.config.user_profiles:UserProfilesParams",
    "train": "pipeline.cdr.configs:TrainParams",
    "score": "pipeline.config.score:ScoreParams",
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _section_model(name: str) -> type[BaseModel]:
    module, _, model = SECTIONS[name].partition(":")
    return getattr(importlib.import_module(module), model)


# --------------------------------------------------------------------------- what a stage sees
class Params:
    """The validated sections a stage declared: ``params.split`` is the section's model, or a
    view limited to the declared keys where only some keys of the section were declared."""

    if TYPE_CHECKING:
        dataset: DatasetParams
        download: DownloadParams
        synthetic: SyntheticParams
        prepare: PrepareParams
        pair: PairParams
        split: SplitParams
        images: ImagesParams
        item_features: ItemFeaturesParams
        user_profiles: UserProfilesParams
        train: TrainParams
        score: ScoreParams

    def __init__(
        self, sections: dict[str, BaseModel], reads: Sequence[str] | None, stage: str | None
    ):
        self._sections = sections
        self._stage = stage or "this run"
        self._tree = None if reads is None else _key_tree(reads)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._tree is None:  # everything was read and checked (tests, benchmarks)
            if name in self._sections:
                return self._sections[name]
            raise AttributeError(f"params.yaml has no section '{name}'")
        if name not in self._tree:
            raise _undeclared(self._stage, name)
        node = self._tree[name]
        section = self._sections[name]
        return section if node is True else _KeyView(section, node, name, self._stage)

    def __repr__(self) -> str:
        return f"Params({self._stage}: {', '.join(self._sections)})"


class _KeyView:
    """Some keys of a section model: the declared ones read through, any other read raises."""

    def __init__(self, model: BaseModel, tree: dict, path: str, stage: str):
        self._model, self._tree, self._path, self._stage = model, tree, path, stage

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._tree:
            if name not in type(self._model).model_fields:  # model_dump() & co read every key
                raise UndeclaredParamError(
                    f"stage {self._stage} reads all of '{self._path}' ({name}) but declares "
                    f"only {', '.join(_dotted(self._tree, self._path))}"
                )
            raise _undeclared(self._stage, f"{self._path}.{name}")
        value = getattr(self._model, name)
        node = self._tree[name]
        return value if node is True else _KeyView(value, node, f"{self._path}.{name}", self._stage)

    def __repr__(self) -> str:
        return (
            f"<{self._path} of stage {self._stage}: {', '.join(_dotted(self._tree, self._path))}>"
        )


def _undeclared(stage: str, key: str) -> UndeclaredParamError:
    return UndeclaredParamError(
        f"stage {stage} reads params '{key}', which its PARAMS do not declare: add it there "
        "and to the stage's params in dvc.yaml"
    )


def _key_tree(reads: Sequence[str]) -> dict:
    """``("pair", "a.b.c")`` -> ``{"pair": True, "a": {"b": {"c": True}}}``; True = all of it."""
    tree: dict = {}
    for dotted in reads:
        *parents, last = dotted.split(".")
        node = tree
        for key in parents:
            if node.get(key) is True:
                break
            node = node.setdefault(key, {})
        else:
            node[last] = True
    return tree


def _dotted(tree: dict, prefix: str) -> list[str]:
    out = []
    for key, node in tree.items():
        name = f"{prefix}.{key}"
        out.extend([name] if node is True else _dotted(node, name))
    return out


# --------------------------------------------------------------------------- loading
def load_params(
    path: str | Path = "params.yaml",
    overrides: dict[str, Any] | None = None,
    reads: Sequence[str] | None = None,
    stage: str | None = None,
) -> Params:
    """Read and validate params.yaml; ``overrides`` maps dotted keys to values (tests, CLI).

    ``reads``: the sections / dotted keys ``stage`` reads (its ``PARAMS``); None = everything.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path} not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:  # an empty file is an accident, not "every default"
        raise ParamsError(f"{path}: empty (no sections); expected the sections of params.yaml")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected one mapping of sections, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value, str(path))
    return _validate(raw, str(path), reads, stage)


def _validate(
    raw: dict,
    source: str = "params.yaml",
    reads: Sequence[str] | None = None,
    stage: str | None = None,
) -> Params:
    problems = [
        f"{source}: {name}: unknown section{_did_you_mean(name, SECTIONS)}"
        for name in raw
        if name not in SECTIONS
    ]
    names = list(SECTIONS) if reads is None else list(dict.fromkeys(r.split(".")[0] for r in reads))
    for name in names:
        if name not in SECTIONS:  # a bug in the stage's PARAMS, not in params.yaml
            raise UndeclaredParamError(f"stage {stage} declares unknown params section '{name}'")
    sections = {}
    for name in names:
        model = _section_model(name)
        try:
            sections[name] = model.model_validate(raw.get(name, {}))
        except ValidationError as exc:
            problems.extend(_format_errors(exc, name, model, source))
    if not problems:
        problems = [f"{source}: {msg}" for msg in _check_across(sections)]
    if problems:
        raise ParamsError("\n".join(problems))
    for dotted in reads or ():  # a bug in the stage's PARAMS, not in params.yaml
        node: Any = sections[dotted.split(".")[0]]
        for key in dotted.split(".")[1:]:
            if key not in getattr(type(node), "model_fields", {}):
                raise UndeclaredParamError(f"stage {stage} declares unknown param '{dotted}'")
            node = getattr(node, key)
    return Params(sections, reads, stage)


def _check_across(sections: dict[str, Any]) -> list[str]:
    """Checks between two sections, made where both were read."""
    problems = []
    features, images = sections.get("item_features"), sections.get("images")
    if features and images and features.image_encoder == "clip" and not images.enabled:
        problems.append("item_features.image_encoder: 'clip' needs images.enabled: true")
    pair, dataset = sections.get("pair"), sections.get("dataset")
    if pair is not None and dataset is not None:
        for role in ("source", "target"):
            name = getattr(pair, role)
            if name not in dataset.domains:
                known = ", ".join(sorted(dataset.domains))
                problems.append(
                    f"pair.{role}: '{name}' is not a domain in dataset.domains ({known})"
                )
    return problems


def _set_dotted(tree: dict, dotted: str, value: Any, source: str = "params.yaml") -> None:
    keys = dotted.split(".")
    node = tree
    for depth, key in enumerate(keys[:-1], start=1):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            where = ".".join(keys[:depth])
            raise ParamsError(
                f"{source}: {dotted}: {where} is {node!r} in the file, not a section, so it has "
                f"no key '{keys[depth]}'"
            )
    node[keys[-1]] = value


def _format_errors(
    exc: ValidationError, section: str, model: type[BaseModel], source: str
) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (section, *err["loc"]))
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest(model, err["loc"])
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], dict):
                msg += f" (got {err['input']!r})"
        lines.append(f"{source}: {loc}: {msg}")
    return lines


def _suggest(model: Any, loc: tuple) -> str:
    """'did you mean ...' for a misspelt key, looked up among the fields of its section."""
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        model = field.annotation
    return _did_you_mean(str(loc[-1]), getattr(model, "model_fields", {}))


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
