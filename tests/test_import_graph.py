"""tools/import_graph.py: finds circles (also through function-level imports) and the project has none."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from tool_script import load_tool

REPO = Path(__file__).resolve().parent.parent


def _tool() -> ModuleType:
    return load_tool("import_graph")


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_finds_a_circle_through_a_function_level_import_and_a_relative_one(tmp_path: Path) -> None:
    tool = _tool()
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg.a import A\n",
        "pkg/a.py": "class A:\n    def f(self):\n        from pkg import b\n        return b\n",
        "pkg/b.py": "from .c import C\n",
        "pkg/c.py": "import pkg.a\nC = 1\n",
        "pkg/d.py": "from pkg import c\n",  # imports into the circle, is not part of it
        "pkg/sub/__init__.py": "",
        "pkg/sub/e.py": "from .. import d\n\n\ndef long():\n    x = 1\n    y = 2\n    return x + y\n",
    })
    graph = tool.build_graph(tmp_path, ("pkg",))
    assert len(graph.modules) == 7
    assert tool.circles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    levels = {(e.source, e.target): e.level for e in graph.edges}
    assert levels[("pkg.a", "pkg.b")] == tool.LEVEL_FUNCTION
    assert levels[("pkg.c", "pkg.a")] == tool.LEVEL_MODULE
    assert levels[("pkg.sub.e", "pkg.d")] == tool.LEVEL_MODULE  # `from .. import d` resolved
    text = tool.report(graph, top=3)
    assert "circles (strongly connected components of more than one module): 1" in text
    assert "pkg.a:3 -> pkg.b  (function level)" in text
    assert "4  pkg.sub.e:long" in text.split("longest functions")[1]


def test_type_checking_imports_are_marked() -> None:
    tool = _tool()
    visitor = tool._Visitor("p.x", False, {"p.x", "p.y"})
    import ast

    visitor.visit(ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.y import Y\n"))
    assert [(e.target, e.level) for e in visitor.edges] == [("p.y", tool.LEVEL_TYPE_CHECKING)]


def test_the_project_has_no_import_circles() -> None:
    tool = _tool()
    graph = tool.build_graph(REPO)
    assert len(graph.modules) > 50  # it really read stream/ and export/
    assert tool.circles(graph) == []
