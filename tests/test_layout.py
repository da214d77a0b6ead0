"""The package's shape: explicit layers, no import cycles, and light modules that stay light.

The import graph is read with ``ast`` from the source files (nothing is imported): an edge per
``import metareward.x`` / ``from metareward.x import y`` anywhere in a module, including imports inside
functions (a lazy import is still a dependency), excluding ``if TYPE_CHECKING:`` blocks (annotations
only). ``from package import name`` counts as an import of ``package.name`` when that is a module.

Layers, lowest first (``LAYERS``); a module may import its own layer and the layers below, never one
above, and no set of modules may import each other in a cycle:

1. ``base``: errors, ``files`` (atomic writes) and ``typed_yaml`` (YAML read into type-checked
   dataclasses), which every other module may use.
2. ``foundation``: layout (the run directory's names), runlock (its writer's lock), seeds, records,
   parsing, choice_probs, templates, data, config, store (an iteration's manifest), pool, ranked, models and
   ``engines.base`` (the request/response types every stage speaks; plain data, no backend).
3. ``selection``: the pure algorithms that pick pairs (Elo, length control, judge pairs).
4. ``engines``: the generation engines and their shared pieces (``make_engine``, tokens, hf, vllm, ...).
5. ``stages``: what one step of the method does with an engine (actor, judge, meta-judge, pairs, the chunk
   logs their passes run through), and its siblings that are used by the loop or the commands: training,
   EFT building, prompt-pool building.
6. ``loop``: what drives stages over iterations or models: the run loop, evaluation, reports, summaries.
7. ``commands``: the user-facing entry points (``metareward.commands.*``, the Python API).
8. ``cli``: the ``metareward`` command and the package's top level.

Some modules are held to less than their layer allows (``ALLOWED``): ``files`` and ``typed_yaml`` import
only the errors; the config imports only the base (it is read by everything, so nothing it imports may
reach back up), and the store never reaches the engines (it is the manifest, not the passes that fill the
run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import metareward

SRC = Path(metareward.__file__).parent.parent

ROOT = "metareward"
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("metareward.errors", "metareward.files", "metareward.typed_yaml")),
    ("foundation", ("metareward.layout", "metareward.runlock", "metareward.seeds", "metareward.records",
                    "metareward.parsing", "metareward.choice_probs",
                    "metareward.templates", "metareward.data", "metareward.config", "metareward.store",
                    "metareward.pool", "metareward.ranked", "metareward.models", "metareward.engines.base")),
    ("selection", ("metareward.selection",)),
    ("engines", ("metareward.engines",)),
    ("stages", ("metareward.stages", "metareward.training", "metareward.eft", "metareward.prompt_pool",
                "metareward.verifiable")),
    ("loop", ("metareward.loop", "metareward.evaluation", "metareward.report", "metareward.summary",
              "metareward.experiment",
              "metareward.drift", "metareward.plan", "metareward.whatif")),
    ("commands", ("metareward.commands", "metareward.api")),
    ("cli", ("metareward.cli", "metareward")),
]


def module_names() -> dict[str, Path]:
    names = {}
    for path in (SRC / "metareward").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _type_checking_only(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (see the module docstring)."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skip = _type_checking_only(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.add(sub if sub in modules else module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def layer_of(module: str) -> int:
    """Index in ``LAYERS`` of the longest prefix naming ``module`` (a package prefix covers its modules;
    the root package ``metareward`` covers only its own ``__init__``, so a new module needs a layer)."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            covers = module == prefix or (prefix != ROOT and module.startswith(prefix + "."))
            if covers and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return best


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_reader_sees_imports():
    """The reader itself: known edges of the package are found, a TYPE_CHECKING import is not."""
    graph = import_graph()
    assert "metareward.engines.hf.engine" in graph["metareward.engines.hf"]
    assert "metareward.loop" in graph["metareward.api"]  # an import inside a function
    assert "metareward.config" not in graph["metareward.engines"]  # annotations only


def test_find_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a2"}, "a2": set(), "x": {"y"}, "y": {"x"}}) == ["x", "y", "x"]


def test_every_module_has_a_layer():
    unlayered = []
    for module in module_names():
        try:
            layer_of(module)
        except AssertionError:
            unlayered.append(module)
    assert unlayered == []
    assert layer_of("metareward.engines.hf.engine") == 3 and layer_of("metareward") == 7
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("metareward.brand_new_module")


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_imports_upward():
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


ALLOWED: dict[str, set[str]] = {
    "metareward.files": {"metareward.errors"},
    "metareward.typed_yaml": {"metareward.errors"},
    "metareward.config": {"metareward.errors", "metareward.files", "metareward.typed_yaml"},
    "metareward.store": {"metareward.errors", "metareward.files", "metareward.layout", "metareward.records"},
}
"""Modules held to a narrower set of package imports than their layer allows (see the module docstring)."""


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_narrow_modules_import_only_what_they_are_allowed(module):
    graph = import_graph()
    assert graph[module] <= ALLOWED[module], f"{module} imports {sorted(graph[module] - ALLOWED[module])}"


def test_the_store_reaches_no_engine_even_indirectly():
    """Nothing the store imports, directly or through other modules, is an engine (``engines.base`` too:
    chunk logs and passes live in ``stages.chunks``)."""
    graph = import_graph()
    seen, todo = set(), ["metareward.store"]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert not {m for m in seen if m == "metareward.engines" or m.startswith("metareward.engines.")}


def test_narrowing_is_checked_against_the_real_graph():
    """The narrowing test can fail: the run loop imports far more than the store may."""
    graph = import_graph()
    assert not graph["metareward.loop"] <= ALLOWED["metareward.store"]
    assert "metareward.stages.chunks" in graph["metareward.loop"]


@pytest.mark.parametrize("module", ["metareward.config", "metareward.engines", "metareward.engines.tokens",
                                    "metareward.records", "metareward.store", "metareward.files",
                                    "metareward.layout", "metareward.typed_yaml"])
def test_light_modules_import_no_torch(module):
    """Reading a config (and the engine interface, records, the store) must not load torch or
    transformers: checked in a fresh interpreter."""
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
