"""The package's layering, read from the source: every import of every module (module level,
inside functions and under ``TYPE_CHECKING`` alike, and ``importlib.import_module`` /
``__import__`` of a literal name), so a lazy import cannot hide a cycle or a forbidden edge.

docs/architecture.md draws the layers; this test is what keeps them true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bench"

# (importer prefix, imported prefix): an edge from a module under the first to one under the second
FORBIDDEN = [
    ("bench.metrics", "bench.store"),
    ("bench.metrics", "bench.run"),
    ("bench.models", "bench.store"),
    ("bench.models", "bench.run"),
    ("bench.models", "bench.train"),
    ("bench.models", "bench.metrics"),
    ("bench.data", "bench.models"),
    ("bench.data", "bench.metrics"),
    ("bench.report", "bench.run"),
    ("bench.report", "bench.train"),
    ("bench.report", "bench.models"),
    ("bench.suite", "bench.store"),
    ("bench.suite", "bench.run"),
    ("bench.config", "bench.store"),
    ("bench.config", "bench.run"),
    ("bench.store", "bench.run"),
    ("bench.store", "bench.report"),
    ("bench.train", "bench.store"),
    ("bench.train", "bench.run"),
]

# The layers from the bottom up (docs/architecture.md): a module may import its own layer and the
# layers of lower rank; layers of the same rank never import each other. A layer is a top-level
# module or subpackage of bench; `bench` itself is the package's __init__ (the Python API).
LAYERS: list[set[str]] = [
    {"bench.registry", "bench.config", "bench.files", "bench.version"},
    {"bench.cache", "bench.numerics"},
    {"bench.data"},
    {"bench.models"},
    {"bench.train"},
    {"bench.metrics"},
    {"bench.suite"},
    {"bench.store"},
    {"bench.run", "bench.report"},
    {"bench.api", "bench.cli"},
    {"bench"},
]

# The edges that cross the layering on purpose: (importer prefix, imported prefix) -> why
UPWARD_ALLOWED = {
    ("bench.run.api", "bench.report"): "bench.run() returns the results table and writes the report, "
    "as `bench run` does",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def packages(mods: dict[str, Path]) -> set[str]:
    """Every package a module lives in, namespace packages (a folder without __init__.py) included,
    so that `import bench.store` or `from .. import store` is an import of `bench.store`."""
    out: set[str] = set()
    for name in mods:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


IMPORT_CALLS = {"import_module", "__import__"}


def _call_target(node: ast.Call, package: str) -> str | None:
    """The module a call ``importlib.import_module("x")``, ``import_module(".x", "pkg")`` or
    ``__import__("x")`` imports, when its name is a literal; else None."""
    fn = node.func
    called = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
    if called not in IMPORT_CALLS or not node.args:
        return None
    first = node.args[0]
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
        return None
    target = first.value
    if called == "import_module" and target.startswith("."):
        anchor = package
        pkg_arg = (
            node.args[1]
            if len(node.args) > 1
            else next((k.value for k in node.keywords if k.arg == "package"), None)
        )
        if isinstance(pkg_arg, ast.Constant) and isinstance(pkg_arg.value, str):
            anchor = pkg_arg.value
        level = len(target) - len(target.lstrip("."))
        base = anchor.split(".")
        base = base[: len(base) - (level - 1)]
        target = ".".join(base + ([target[level:]] if target[level:] else []))
    return target


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The bench modules that ``name`` imports anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            call = _call_target(node, package)
            if call is None:
                continue
            targets = [call]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from bench.metrics import reference` imports a submodule; `import X` of a name does not
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            # `import bench.run.driver` counts as an import of the deepest bench module named
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "bench":
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods) | packages(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def rank(module: str) -> int | None:
    layer = layer_of(module)
    return next((i for i, names in enumerate(LAYERS) if layer in names), None)


def _source(tmp_path: Path, module: str, *lines: str) -> Path:
    """A module's source file under ``tmp_path``, as the reader finds it in the package."""
    src = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
    src.parent.mkdir(parents=True)
    src.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return src


def test_the_reader_finds_every_kind_of_import(tmp_path):
    src = _source(
        tmp_path,
        "bench.run.x",
        "from typing import TYPE_CHECKING",
        "from . import y",
        "from ..store import tracking",
        "if TYPE_CHECKING:\n    from bench.report.summary import Summary",
        "def f():\n    import bench.metrics.base",
    )
    known = {"bench.run.x", "bench.run.y", "bench.store", "bench.store.tracking",
             "bench.report.summary", "bench.metrics.base"}
    assert imports("bench.run.x", src, known) == {
        "bench.run.y", "bench.store.tracking", "bench.report.summary", "bench.metrics.base"
    }


def test_the_reader_finds_namespace_packages_and_import_calls(tmp_path):
    src = _source(
        tmp_path,
        "bench.metrics.x",
        "import importlib",
        "from importlib import import_module",
        "import bench.store",
        "from .. import run",
        "def f(name):",
        "    importlib.import_module('bench.report.summary')",
        "    import_module('.y', 'bench.data')",
        "    import_module('..train', package='bench.metrics')",
        "    __import__('bench.cli')",
        "    importlib.import_module(name)  # not a literal: nothing to read",
    )
    mods = {"bench.metrics.x": src, "bench.store.tracking": src, "bench.run": src,
            "bench.report.summary": src, "bench.data.y": src, "bench.train": src, "bench.cli": src}
    known = set(mods) | packages(mods)
    assert "bench.store" in known
    assert imports("bench.metrics.x", src, known) == {
        "bench.store", "bench.run", "bench.report.summary", "bench.data.y", "bench.train", "bench.cli"
    }


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("importer,imported", FORBIDDEN, ids=[f"{a}->{b}" for a, b in FORBIDDEN])
def test_forbidden_edge(importer, imported):
    bad = sorted(
        f"{src} imports {dst}"
        for src, dsts in graph().items()
        if under(src, importer)
        for dst in dsts
        if under(dst, imported)
    )
    assert not bad, "\n".join(bad)


def test_every_module_has_a_layer():
    """A new top-level module or subpackage is placed in LAYERS (and docs/architecture.md) on purpose."""
    unplaced = sorted(name for name in modules() if rank(name) is None)
    assert not unplaced, "not in LAYERS: " + ", ".join(unplaced)


def test_no_module_imports_a_layer_above_or_beside_it():
    bad = []
    for src, dsts in graph().items():
        for dst in dsts:
            rs, rd = rank(src), rank(dst)
            if rs is None or rd is None or layer_of(src) == layer_of(dst) or rd < rs:
                continue
            if any(under(src, a) and under(dst, b) for a, b in UPWARD_ALLOWED):
                continue
            bad.append(f"{src} imports {dst} ({'above' if rd > rs else 'beside'} it)")
    assert not bad, "\n".join(sorted(bad))


def test_no_function_over_80_lines():
    """Long functions hide steps; an argparse table (``build_parser``) is the one exception."""
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name != "build_parser":
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_the_quick_commands_import_no_heavy_library():
    """`bench list` and `bench validate` read registries and settings only: torchvision (through
    torch-fidelity and torchmetrics) and torch's compiler are imported when a metric computes or a
    loss compiles, not at start-up (benchmarks/startup.py measures what it saves)."""
    import subprocess
    import sys

    heavy = ("torchvision", "torch_fidelity", "torchmetrics", "torch._dynamo", "mlflow")
    probe = (
        "import sys, contextlib, io\n"
        "from bench.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['list']) == 0 and main(['validate', 'suites/smoke.yaml']) == 0\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=PACKAGE.parent, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", out.stdout
