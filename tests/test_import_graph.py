"""The package's import graph has no cycles (function-level imports included): a module that
needs another's helper while that one needs it back means a helper in the wrong place.

A module importing from its own package's `__init__` (the package re-exporting its members)
is not counted: that is the package's public face, not a dependency between two modules."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "moe_compile"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the package modules it imports anywhere in its body}."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            imported |= {candidate for candidate in candidates
                         if candidate in files and candidate != name and not name.startswith(candidate + ".")}
        graph[name] = imported
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_has_no_import_cycles():
    assert cycles(import_graph()) == []


def test_validate_compares_runners_and_never_exports():
    """validate/ gets ONNX files (or, in bench, an export function from the command); it builds
    its torch reference through compiler/, never through the exporter."""
    graph = import_graph()
    exporting = {name for name in graph if name.startswith("moe_compile.validate")
                 and "moe_compile.export.exporter" in graph[name]}
    assert exporting == set()


def test_the_op_contract_depends_on_no_stage_of_the_compiler():
    """grouped_moe_op/ (attributes, reference, registration) is what compiler/, export/ and
    plugins/ share: it imports none of them, except the CUDA kernel and the routing it is kept
    off, imported on the first CUDA call (plugins/grouped_moe/launcher.py, gpu_failures.py)."""
    graph = import_graph()
    op_modules = {name for name in graph if name.startswith("moe_compile.grouped_moe_op")}
    outside = {dep for name in op_modules for dep in graph[name]
               if not dep.startswith("moe_compile.grouped_moe_op")} - {"moe_compile.errors"}
    assert outside == {"moe_compile.plugins.grouped_moe.launcher", "moe_compile.plugins.grouped_moe.gpu_failures"}
    at_import = subprocess.run([sys.executable, "-c", "import sys, moe_compile.grouped_moe_op; "
                                "print(sorted(m for m in sys.modules if m.startswith('moe_compile.')))"],
                               capture_output=True, text=True, check=True).stdout
    assert not any(stage in at_import for stage in ("compiler", "export", "plugins", "validate", "deploy")), at_import
