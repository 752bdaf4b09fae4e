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
