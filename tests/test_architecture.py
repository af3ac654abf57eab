"""The package's layering, checked statically: imports point down, never in a cycle.

Every ``import`` in every module counts, including those inside functions and under
``TYPE_CHECKING``: a cycle hidden behind a function-level import is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "avatarkd"

# bottom to top; a part may import parts of its own layer or below (see docs/architecture.md)
LAYERS: list[set[str]] = [
    {"errors", "naming", "atomic", "loading", "registry"},
    {"config"},
    {"losses"},
    {"avatars", "uncertainty"},
    {"akd"},
    {"distiller"},
    {"data", "metrics", "models", "plots"},
    {"tasks"},
    {"engine"},
    {"runner"},
    {"demo", "capacity", "maskd_tokens"},
    {"cli", "__main__", "integrations"},
]
LAYER_OF = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _part(module: str) -> str | None:
    """``avatarkd.x.y`` -> ``x`` (None for the package root itself or anything outside it)."""
    pieces = module.split(".")
    if pieces[0] != "avatarkd" or len(pieces) < 2:
        return None
    return pieces[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").is_file()


def _imports(path: Path, text: str | None = None) -> set[str]:
    """Absolute names of every avatarkd module ``path`` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    source = path.read_text() if text is None else text
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("avatarkd"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("avatarkd"):
                continue
            found.add(target)
            # "from . import losses" imports a submodule, not a name
            found.update(f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}"))
    return found


def part_graph() -> dict[str, set[str]]:
    """Top-level part -> the other top-level parts it imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue  # the package root re-exports the public API from every layer
        src = _part(_module_name(path))
        assert src is not None
        graph.setdefault(src, set())
        for target in _imports(path):
            dst = _part(target)
            if dst is not None and dst != src:
                graph[src].add(dst)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_top_level_parts():
    cycle = _cycle(part_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_can_fail():
    assert _cycle({"engine": {"tasks"}, "tasks": {"config", "engine"}, "config": set()}) == [
        "engine",
        "tasks",
        "engine",
    ]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_part_has_a_layer_and_imports_point_down():
    graph = part_graph()
    unknown = sorted(set(graph) - set(LAYER_OF))
    assert not unknown, f"parts missing from LAYERS (and docs/architecture.md): {unknown}"
    upward = sorted(f"{src} -> {dst}" for src, dsts in graph.items() for dst in dsts if LAYER_OF[dst] > LAYER_OF[src])
    assert not upward, f"imports that point up: {upward}"


def test_function_level_imports_are_seen():
    # the parser must see imports inside functions and TYPE_CHECKING blocks (they hid the old cycle)
    assert "avatarkd.config" in _imports(PACKAGE / "tasks" / "base.py")
    text = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..engine import x\n"
        "def f():\n    from ..runner import y\n"
    )
    assert {"avatarkd.engine", "avatarkd.runner"} <= _imports(PACKAGE / "tasks" / "probe.py", text)
    assert "avatarkd.losses" in _imports(PACKAGE / "__init__.py")
