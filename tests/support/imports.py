"""The carbench files a script or module imports, read from the code (no import is run): for the dvc.yaml deps test
and the layering test."""
from __future__ import annotations

import ast
from pathlib import Path

from support.params import ROOT

PACKAGE = "carbench"
SRC = ROOT / "src" / PACKAGE
RESOURCES = SRC / "resources"
#: Resources read as text, which may name other resources.
TEXT_RESOURCES = (".yaml", ".yml", ".json", ".txt", ".csv")


def _module_file(module: str) -> Path | None:
    """``carbench.x`` -> src/carbench/x.py (or the package's __init__.py); None outside the package."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    path = SRC.joinpath(*parts[1:])
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1]) if parts[-1] != "__init__" else ".".join(parts[:-1])


def direct_imports(path: Path) -> set[Path]:
    """The package files ``path`` imports (anywhere in it), plus the __init__.py of every package on the way."""
    found: set[Path] = set()
    tree = ast.parse(path.read_text(), str(path))
    here = _package_of(path) if path.is_relative_to(SRC) else ""
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):     # importing a.b.c runs a/__init__, a/b/__init__, ...
                file = _module_file(".".join(parts[:i]))
                if file is not None:
                    found.add(file)
    return found


def imported_files(script: Path) -> set[str]:
    """The stage script and every package file it imports, transitively, as repository-relative paths."""
    todo, seen = [script], {script}
    while todo:
        for dep in direct_imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return {p.relative_to(ROOT).as_posix() for p in seen}


def _string_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def resource_files(code: set[str]) -> set[str]:
    """The files of src/carbench/resources/ that the ``code`` files name, and those named by a named text resource."""
    by_name = {p.name: p for p in RESOURCES.iterdir() if p.is_file()}
    literals = set().union(*(_string_literals(ROOT / f) for f in code if f.endswith(".py")))
    found = {p for name, p in by_name.items() if name in literals}
    todo = list(found)
    while todo:
        resource = todo.pop()
        if resource.suffix not in TEXT_RESOURCES:
            continue
        text = resource.read_text()
        for name, p in by_name.items():
            if p not in found and name in text:
                found.add(p)
                todo.append(p)
    return {p.relative_to(ROOT).as_posix() for p in found}
