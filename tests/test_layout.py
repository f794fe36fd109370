"""The three wings of src/carbench: the core every stage uses, the pipeline's phase packages, and the workshop of
tools around the pipeline. Imports flow one way: the core imports nothing else of carbench, config only the core,
and nothing of the pipeline (a stage script, a phase module) imports the workshop."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.imports import SRC, direct_imports
from support.params import ROOT

CORE, CONFIG, WORKSHOP = SRC / "core", SRC / "config", SRC / "workshop"
#: Loose modules beside the packages: the package itself and the resolve stage's pre-flight, which spans config and
#: model. Anything else belongs to a wing.
LOOSE = {"__init__.py", "preflight.py"}


def _modules(under: Path) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def _inside(path: Path, folder: Path) -> bool:
    return path.is_relative_to(folder)


def _imports_outside(module: Path, allowed: tuple[Path, ...]) -> list[str]:
    init = SRC / "__init__.py"
    return sorted(p.relative_to(ROOT).as_posix() for p in direct_imports(module)
                  if p != init and not any(_inside(p, folder) for folder in allowed))


@pytest.mark.parametrize("module", _modules(CORE), ids=lambda p: p.name)
def test_the_core_imports_nothing_else_of_carbench(module):
    assert not _imports_outside(module, (CORE,))


@pytest.mark.parametrize("module", _modules(CONFIG), ids=lambda p: p.name)
def test_config_imports_only_the_core(module):
    assert not _imports_outside(module, (CORE, CONFIG))


PIPELINE = [p for p in _modules(SRC) if not _inside(p, WORKSHOP)] + sorted((ROOT / "stages").glob("*.py"))


@pytest.mark.parametrize("module", PIPELINE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_nothing_of_the_pipeline_imports_the_workshop(module):
    found = sorted(p.relative_to(ROOT).as_posix() for p in direct_imports(module) if _inside(p, WORKSHOP))
    assert not found, f"{module.relative_to(ROOT)} imports the workshop: {found}"


def test_the_layering_checks_can_fail(tmp_path):
    """A stage that imports the workshop, and a core module that imports a phase, are seen."""
    fake = tmp_path / "stage.py"
    fake.write_text("from carbench.workshop import tuning\nfrom carbench.model import build\n")
    assert any(_inside(p, WORKSHOP) for p in direct_imports(fake))
    assert _imports_outside(fake, (CORE,)) == ["src/carbench/model/__init__.py", "src/carbench/model/build.py",
                                               "src/carbench/workshop/__init__.py", "src/carbench/workshop/tuning.py"]


def test_loose_modules_are_few_and_known():
    loose = {p.name for p in SRC.glob("*.py")}
    assert loose == LOOSE, f"put {sorted(loose - LOOSE)} in the core, a phase package or the workshop"


def _architecture_paths() -> list[str]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    names = re.findall(r"`((?:src/carbench|stages|scripts|tests|configs|docs)/[\w./-]*)`", text)
    return sorted(set(names))


def test_every_path_docs_architecture_names_exists():
    """The tree and the room table of docs/ARCHITECTURE.md name real files and folders (a move must update them)."""
    paths = _architecture_paths()
    assert len(paths) > 20
    missing = [p for p in paths if not (ROOT / p.replace("<name>", "x")).exists() and "<" not in p and "*" not in p]
    assert not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"
