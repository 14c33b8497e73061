"""Dependencies run one way: a walk over every import statement of the three packages (module
level and inside functions, but not ``if TYPE_CHECKING:`` blocks) finds no cycle between modules
and no edge against the layering.

Allowed edges between packages: ``sae_flux -> itda`` (a Flux cache feeds an ITDA build,
:mod:`sae_flux.itda_build`) and ``itda -> cae`` (one decoder-layer finder,
:func:`cae.model.decoder_layers`, for LM sources); ``cae`` imports neither. The console-script
modules (``sae_flux.cli``, ``itda.cli``, ``cae.cli``) are the composition roots: they dispatch
to any package (``itda build --cache`` reads a Flux cache through :mod:`sae_flux.itda_build`)
and no module imports them. Inside ``sae_flux`` the demo and the CLI sit on top: no library
module imports ``sae_flux.demo``, ``sae_flux.cli`` or ``sae_flux.commands``. A package's
``__init__`` re-exports its modules and is left out of the cycle walk.

There are no exceptions: any new cycle or upward edge fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sae_flux", "itda", "cae")
ALLOWED_ACROSS = {("sae_flux", "itda"), ("itda", "cae")}
TOP = ("sae_flux.demo", "sae_flux.cli", "sae_flux.commands", "itda.cli", "cae.cli", "cae.evaluate.cli")
CONSOLE_SCRIPTS = ("sae_flux.cli", "itda.cli", "cae.cli")
"""The modules behind the ``sae-flux``, ``itda`` and ``cae`` commands (pyproject ``[project.scripts]``)."""


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            found[".".join(parts)] = path
    return found


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules and f"{name}.__init__" not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def import_edges() -> dict[str, set[str]]:
    """module -> project modules it imports (package ``__init__`` modules named by package)."""
    modules = _modules()
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        source = name.removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        targets = edges.setdefault(source, set())
        for node in ast.walk(tree):
            if getattr(node, "lineno", 0) in skip:
                continue
            for target in _imported(node):
                if target.split(".")[0] in PACKAGES:
                    owner = _owner(target, modules)
                    if owner and owner != source:
                        targets.add(owner.removesuffix(".__init__"))
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), packages left out."""
    graph = {m: {t for t in ts if t not in PACKAGES} for m, ts in edges.items() if m not in PACKAGES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_one_that_imports_it_back():
    assert _cycles(import_edges()) == []


def test_the_cycle_walk_finds_a_cycle():
    edges = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.w": {"a.x"}}
    assert _cycles(edges) == [["a.x", "a.y", "a.z"]]


def test_console_scripts_are_the_modules_of_the_commands():
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert sorted(target.split(":")[0] for target in scripts.values()) == sorted(CONSOLE_SCRIPTS)


def test_packages_depend_one_way():
    wrong = sorted(
        f"{source} -> {target}"
        for source, targets in import_edges().items()
        for target in targets
        if source.split(".")[0] != target.split(".")[0]
        and (source.split(".")[0], target.split(".")[0]) not in ALLOWED_ACROSS
        and source not in CONSOLE_SCRIPTS
    )
    assert wrong == []


def test_library_modules_do_not_import_the_demo_or_the_clis():
    def on_top(name: str) -> bool:
        return any(name == top or name.startswith(f"{top}.") for top in TOP)

    wrong = sorted(
        f"{source} -> {target}"
        for source, targets in import_edges().items()
        for target in targets
        if on_top(target) and not on_top(source) and source not in PACKAGES
    )
    assert wrong == []


def test_the_shared_leaf_imports_no_project_package():
    """``_sae_flux_shared`` (user errors, the HTTP client) serves all three packages: a leaf."""
    wrong = sorted(
        f"{path.name} -> {target}"
        for path in (ROOT / "_sae_flux_shared").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        for target in _imported(node)
        if target.split(".")[0] in PACKAGES
    )
    assert wrong == []
