"""Functions stay short enough to read at once: none over 60 lines in the product's packages."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 60


def test_no_function_is_longer_than_the_limit():
    long = []
    for package in ("mammut_search", "index_builder", "ui"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > LIMIT:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
