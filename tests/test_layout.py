"""The package layering (README, Layout): every import in the project's code, top-level or inside a function,
obeys it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mammut_search", "index_builder", "ui")
LEAF_UTILITIES = {"mammut_search.errors", "mammut_search.atomic"}  # import nothing of the project themselves


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # "from pkg import module"
    return found


def project_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations() -> list[str]:
    found = []
    for path in project_files():
        me = module_name(path)
        for target in imports(path):
            project = any(under(target, p) for p in PACKAGES)
            if under(me, "mammut_search.model") and project and not under(target, "mammut_search.model") \
                    and not any(under(target, leaf) for leaf in LEAF_UTILITIES):
                found.append(f"{me} -> {target}: model/ imports nothing else of the project")
            serving = under(me, "mammut_search") and not any(
                under(me, p) for p in ("mammut_search.cli", "mammut_search.train"))
            if serving and any(under(target, p) for p in ("mammut_search.train", "index_builder", "ui")):
                found.append(f"{me} -> {target}: serving code never imports training, the index builder or the UI")
            if under(me, "index_builder") and (under(target, "ui") or under(target, "mammut_search.train")):
                found.append(f"{me} -> {target}: index_builder never imports the UI or training")
            if under(me, "ui") and (under(target, "index_builder") or under(target, "mammut_search.train")):
                found.append(f"{me} -> {target}: ui never imports the index builder or training")
            if under(target, "faiss") and not under(me, "mammut_search.index"):
                found.append(f"{me} -> {target}: faiss is imported only under mammut_search/index/")
    return found


def test_imports_follow_the_layering():
    assert violations() == []


def test_the_check_sees_lazy_imports(tmp_path, monkeypatch):
    """A function-level import that breaks a rule is caught (so the check can fail)."""
    fake = tmp_path / "mammut_search" / "model"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from ..search import Searcher\n    import faiss\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    found = violations()
    assert any("model/ imports nothing else" in v for v in found)
    assert any("faiss is imported only" in v for v in found)


@pytest.mark.parametrize("leaf", sorted(LEAF_UTILITIES))
def test_leaf_utilities_import_nothing_of_the_project(leaf):
    path = ROOT / (leaf.replace(".", "/") + ".py")
    assert not [m for m in imports(path) if any(under(m, p) for p in PACKAGES)]
