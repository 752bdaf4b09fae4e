"""FAISS is known in one place: no module outside mammut_search/index imports it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mammut_search", "index_builder", "ui")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_faiss_is_imported_only_under_the_index_package():
    offenders = [str(path.relative_to(ROOT)) for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
                 if "faiss" in imported_modules(path)
                 and not path.is_relative_to(ROOT / "mammut_search" / "index")]
    assert offenders == []


def test_without_faiss_installed_the_error_says_which_extra_to_install(monkeypatch):
    import sys

    import pytest

    from mammut_search.errors import UserError
    from mammut_search.index.vectors import require_faiss

    monkeypatch.setitem(sys.modules, "faiss", None)  # as if neither faiss-cpu nor faiss-gpu-cu12 were installed
    with pytest.raises(UserError, match=r"mammut-search\[cpu\].*mammut-search\[gpu\]"):
        require_faiss()
