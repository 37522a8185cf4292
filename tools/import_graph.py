"""Print the project's import graph in numbers: circles, longest modules, functions and classes.

Why: an import circle means two modules each need a piece of the other, so neither can be read,
tested or moved alone; the usual fix is to give the shared piece (a file format, a result type, a
drawing primitive) a small module of its own. This script finds them with the standard library
only (``ast``: nothing is imported or run), so anyone can measure the graph before and after a
change::

    python tools/import_graph.py                 # stream/ and export/ of this checkout
    python tools/import_graph.py --root /tmp/base --top 15

A circle is a strongly connected component of the graph with more than one module. Every import
counts, also one inside a function (a lazy import hides a circle from Python, not from the reader);
each edge of a circle is printed with where it is and whether it sits at module level, in a
function, or under ``if TYPE_CHECKING:``. ``import a.b`` and ``from a.b import c`` count as an edge
to ``a.b`` (or to the module ``a.b.c`` when that is a module); the parent package's ``__init__``
that Python also runs is not counted, so an edge means a name really read from that module.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PACKAGES = ("stream", "export")
DEFAULT_TOP = 10  # enough to see the outliers without scrolling past the whole project

# where an import statement sits
LEVEL_MODULE = "module"
LEVEL_FUNCTION = "function"
LEVEL_TYPE_CHECKING = "type-checking"


@dataclass(frozen=True)
class Edge:
    """One import of a project module by another: ``source`` imports ``target`` at ``line``."""

    source: str
    target: str
    line: int
    level: str  # LEVEL_MODULE, LEVEL_FUNCTION or LEVEL_TYPE_CHECKING


@dataclass(frozen=True)
class Function:
    """A function, method or class: ``qualname`` as ``module:Class.method``, its length in lines."""

    qualname: str
    lines: int


@dataclass(frozen=True)
class Graph:
    """The modules under the packages (name -> length in lines), the edges between them, the functions."""

    modules: dict[str, int]
    edges: tuple[Edge, ...]
    functions: tuple[Function, ...]
    classes: tuple[Function, ...]


def module_name(root: Path, path: Path) -> str:
    """``stream/engine/__init__.py`` -> ``stream.engine``; ``stream/run.py`` -> ``stream.run``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Visitor(ast.NodeVisitor):
    """Collects one module's imports (with where they sit) and its functions' lengths."""

    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.module = module
        self.is_package = is_package
        self.known = known
        self.edges: list[Edge] = []
        self.functions: list[Function] = []
        self.classes: list[Function] = []
        self._scope: list[str] = []  # class and function names around the current node
        self._in_function = 0
        self._in_type_checking = 0

    def _level(self) -> str:
        if self._in_function:
            return LEVEL_FUNCTION
        return LEVEL_TYPE_CHECKING if self._in_type_checking else LEVEL_MODULE

    def _add(self, target: str, line: int) -> None:
        # the longest known prefix: ``import stream.engine.base as b`` is an edge to stream.engine.base
        parts = target.split(".")
        while parts and ".".join(parts) not in self.known:
            parts.pop()
        edge = Edge(self.module, ".".join(parts), line, self._level())
        if parts and edge.target != self.module and edge not in self.edges:  # one per statement
            self.edges.append(edge)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            package = self.module.split(".")
            if not self.is_package:
                package = package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}" if base else alias.name
            self._add(sub if sub in self.known else base, node.lineno)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._in_type_checking += 1
            for child in node.body:
                self.visit(child)
            self._in_type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _length(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> Function:
        end = node.end_lineno or node.lineno
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        return Function(f"{self.module}:{'.'.join(self._scope)}", end - start + 1)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scope.append(node.name)
        self.classes.append(self._length(node))
        self.generic_visit(node)
        self._scope.pop()

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._scope.append(node.name)
        self.functions.append(self._length(node))
        self._in_function += 1
        self.generic_visit(node)
        self._in_function -= 1
        self._scope.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function


def build_graph(root: Path, packages: tuple[str, ...] = DEFAULT_PACKAGES) -> Graph:
    """Parse every ``.py`` file under ``root/<package>`` (no code is run)."""
    files = {module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    known = set(files)
    modules: dict[str, int] = {}
    edges: list[Edge] = []
    functions: list[Function] = []
    classes: list[Function] = []
    for name, path in files.items():
        text = path.read_text(encoding="utf-8")
        modules[name] = len(text.splitlines())
        visitor = _Visitor(name, path.name == "__init__.py", known)
        visitor.visit(ast.parse(text, filename=str(path)))
        edges.extend(visitor.edges)
        functions.extend(visitor.functions)
        classes.extend(visitor.classes)
    return Graph(modules, tuple(edges), tuple(functions), tuple(classes))


def circles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module, each sorted, largest first.

    Tarjan's algorithm, iterative (a deep package would overflow Python's recursion limit)."""
    succ: dict[str, list[str]] = {m: [] for m in graph.modules}
    for e in graph.edges:
        if e.target not in succ[e.source]:
            succ[e.source].append(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(succ):
        if start in index:
            continue
        work = [(start, iter(succ[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found, key=lambda c: (-len(c), c))


def report(graph: Graph, top: int = DEFAULT_TOP) -> str:
    """The text the command prints."""
    out: list[str] = []
    found = circles(graph)
    out.append(f"modules: {len(graph.modules)}, import edges: {len({(e.source, e.target) for e in graph.edges})}")
    out.append(f"circles (strongly connected components of more than one module): {len(found)}")
    for component in found:
        members = set(component)
        out.append(f"  - {', '.join(component)}")
        for e in sorted(graph.edges, key=lambda e: (e.source, e.line)):
            if e.source in members and e.target in members:
                out.append(f"      {e.source}:{e.line} -> {e.target}  ({e.level} level)")
    out.append(f"longest modules (lines), top {top}:")
    for name, lines in sorted(graph.modules.items(), key=lambda kv: (-kv[1], kv[0]))[:top]:
        out.append(f"  {lines:6d}  {name}")
    out.append(f"longest functions (lines, decorators included), top {top}:")
    for f in sorted(graph.functions, key=lambda f: (-f.lines, f.qualname))[:top]:
        out.append(f"  {f.lines:6d}  {f.qualname}")
    out.append(f"longest classes (lines), top {top}:")
    for c in sorted(graph.classes, key=lambda c: (-c.lines, c.qualname))[:top]:
        out.append(f"  {c.lines:6d}  {c.qualname}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="checkout to measure (default: the one holding this script)")
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES), help="top-level packages")
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, help="how many longest modules/functions")
    args = parser.parse_args(argv)
    missing = [p for p in args.packages if not (args.root / p).is_dir()]
    if missing:
        print(f"error: no package folder {', '.join(missing)} under {args.root}", file=sys.stderr)
        return 2
    print(report(build_graph(args.root, tuple(args.packages)), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
