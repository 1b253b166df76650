"""dvc.yaml knows what every stage needs, so `dvc repro` re-runs what a change touches.

For each stage (``cmd: python -m pipeline.X``):

- code: every project file (``pipeline/``, ``models/``) the stage module imports, transitively
  (imports inside functions count, ``if TYPE_CHECKING:`` blocks do not; importing ``a.b.c``
  runs ``a/__init__.py`` and ``a/b/__init__.py`` too), plus the config module of every params
  section it reads (:data:`pipeline.config.SECTIONS`, imported by name at run time), is covered
  by the stage's ``deps`` (a directory covers the files under it);
- params: the stage's ``params`` in dvc.yaml equal the ``PARAMS`` its module declares. Its
  ``main`` loads the params through that declaration (``cli.params_from(args, stage, PARAMS)``),
  and a read outside it raises (:class:`pipeline.errors.UndeclaredParamError`), so every stage
  run (tests/test_pipeline_e2e.py runs them all) proves the declaration complete.

Listed code deps that nothing imports are reported as warnings: they only cost re-runs.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from pipeline.config import SECTIONS
from tests.conftest import ROOT

CODE_ROOTS = ("pipeline", "models")


# --------------------------------------------------------------------------- imports
def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file of project module ``name`` (``pipeline.io`` -> pipeline/io/__init__.py)."""
    if name.split(".")[0] not in CODE_ROOTS:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Dotted names a module's source imports anywhere (functions included), TYPE_CHECKING
    blocks aside. ``from a import b`` gives ``a`` and ``a.b`` (b may be a module)."""
    tree = ast.parse(source)
    skip = _type_checking_nodes(tree)
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _with_packages(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs its packages first."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(modules: list[str], root: Path = ROOT) -> set[Path]:
    """Every project file that importing ``modules`` executes."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        for mod in _with_packages(name):
            if mod in seen:
                continue
            seen.add(mod)
            path = module_file(mod, root)
            if path is None:
                continue
            files.add(path)
            todo.extend(imported_names(path.read_text(), mod, path.name == "__init__.py"))
    return files


# --------------------------------------------------------------------------- params
def declared_params(stage_file: Path) -> tuple[str, ...]:
    """The stage module's ``PARAMS`` (a literal tuple), read without importing the module."""
    for node in ast.parse(stage_file.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PARAMS" for t in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"{stage_file}: no module-level PARAMS (the params the stage reads)")


def listed_params(stage: dict) -> set[str]:
    out = set()
    for entry in stage.get("params", []):
        if isinstance(entry, str):
            out.add(entry)
        else:  # {"params.yaml": [keys]}; other params files are none of ours
            out.update(entry.get("params.yaml", []))
    return out


# --------------------------------------------------------------------------- the check
@dataclass
class Report:
    missing: list[str] = field(default_factory=list)  # needed files no dep covers
    unneeded: list[str] = field(default_factory=list)  # code deps nothing imports
    absent: list[str] = field(default_factory=list)  # code deps that do not exist
    params_missing: list[str] = field(default_factory=list)  # declared, not in dvc.yaml
    params_extra: list[str] = field(default_factory=list)  # in dvc.yaml, not declared


def stage_module(stage: dict) -> str | None:
    match = re.fullmatch(r"python -m (pipeline\.\w+)(\s.*)?", stage.get("cmd", "").strip())
    return match.group(1) if match else None


def check_stage(stage: dict, root: Path = ROOT) -> Report:
    module = stage_module(stage)
    stage_file = module_file(module, root)
    declared = declared_params(stage_file)
    config_modules = [SECTIONS[p.split(".")[0]].partition(":")[0] for p in declared]
    needed = import_closure([module, *config_modules], root)
    deps = [root / d for d in stage.get("deps", [])]
    report = Report()
    for path in sorted(needed):
        if not any(path == d or d in path.parents for d in deps):
            report.missing.append(str(path.relative_to(root)))
    for dep in deps:
        rel = str(dep.relative_to(root))
        code = rel.split("/")[0] in CODE_ROOTS
        if code and not dep.exists():
            report.absent.append(rel)
        elif (
            code
            and rel.split("/")[0] in CODE_ROOTS
            and not any(p == dep or dep in p.parents for p in needed)
        ):
            report.unneeded.append(rel)
    listed = listed_params(stage)
    report.params_missing = sorted(set(declared) - listed)
    report.params_extra = sorted(listed - set(declared))
    return report


def load_stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: s for name, s in stages.items() if stage_module(s)}


STAGES = load_stages()


def test_every_stage_runs_a_pipeline_module():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(STAGES) == set(stages), "a stage whose cmd is not python -m pipeline.<module>"
    for name, stage in STAGES.items():
        assert stage_module(stage) == f"pipeline.{name}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_deps_cover_the_code_the_stage_imports(name):
    report = check_stage(STAGES[name])
    assert not report.missing, f"dvc.yaml stage {name}: add to deps: {report.missing}"
    assert not report.absent, f"dvc.yaml stage {name}: deps that do not exist: {report.absent}"
    if report.unneeded:
        warnings.warn(
            f"dvc.yaml stage {name}: deps nothing imports: {report.unneeded}", stacklevel=1
        )


@pytest.mark.parametrize("name", sorted(STAGES))
def test_params_equal_what_the_stage_declares(name):
    report = check_stage(STAGES[name])
    assert not report.params_missing, (
        f"dvc.yaml stage {name}: add to params: {report.params_missing}"
    )
    assert not report.params_extra, (
        f"dvc.yaml stage {name}: params the stage does not read (or add them to its PARAMS): "
        f"{report.params_extra}"
    )


@pytest.mark.parametrize("name", sorted(STAGES))
def test_the_stage_loads_its_params_through_its_declaration(name):
    # main() passes PARAMS to cli.params_from, which refuses any read outside them at run time
    tree = ast.parse(module_file(f"pipeline.{name}").read_text())
    calls = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "cli.params_from"
    ]
    assert calls == [f"cli.params_from(args, '{name}', PARAMS)"]


def _without_dep(name: str, dep: str) -> list[str]:
    """What the check adds to its findings for ``name`` when ``dep`` is deleted from dvc.yaml."""
    stage = {**STAGES[name], "deps": [d for d in STAGES[name]["deps"] if d != dep]}
    assert len(stage["deps"]) == len(STAGES[name]["deps"]) - 1, f"{dep} is not a dep of {name}"
    before = set(check_stage(STAGES[name]).missing)
    return sorted(set(check_stage(stage).missing) - before)


def test_a_deleted_dep_is_reported():
    # a library module two imports away from the stage module
    assert _without_dep("user_profiles", "pipeline/features/encoders/llm.py") == [
        "pipeline/features/encoders/llm.py"
    ]
    # read only through the params section it configures (imported by name at run time)
    assert _without_dep("split", "pipeline/config/split.py") == ["pipeline/config/split.py"]
    # a directory dep: every file under it is then missing
    assert "pipeline/cdr/configs.py" in _without_dep("train", "pipeline/cdr")


def test_a_deleted_param_and_a_stray_one_are_reported():
    stage = {**STAGES["user_profiles"]}
    stage["params"] = [p for p in stage["params"] if p != "item_features.clip.pretrained"]
    stage["params"].append("train")
    report = check_stage(stage)
    assert report.params_missing == ["item_features.clip.pretrained"]
    assert report.params_extra == ["train"]


def test_unneeded_and_absent_deps_are_reported():
    stage = {**STAGES["split"]}
    stage["deps"] = [*stage["deps"], "pipeline/recs/topk.py", "pipeline/no_such.py"]
    report = check_stage(stage)
    assert report.unneeded == ["pipeline/recs/topk.py"]
    assert report.absent == ["pipeline/no_such.py"]


def test_imports_in_functions_count_and_type_checking_ones_do_not(tmp_path):
    pkg = tmp_path / "pipeline"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "stage.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from pipeline import eager\n"
        "if TYPE_CHECKING:\n    from pipeline import typing_only\n"
        "def run():\n    from pipeline.sub.lazy import thing\n"
    )
    for name in ("eager", "typing_only", "sub/lazy"):
        (pkg / f"{name}.py").write_text("from . import leaf\n" if name == "sub/lazy" else "")
    (pkg / "sub" / "leaf.py").write_text("")
    files = {str(p.relative_to(tmp_path)) for p in import_closure(["pipeline.stage"], tmp_path)}
    assert files == {
        "pipeline/__init__.py",
        "pipeline/stage.py",
        "pipeline/eager.py",
        "pipeline/sub/__init__.py",
        "pipeline/sub/lazy.py",
        "pipeline/sub/leaf.py",
    }
