"""Small modules and small functions: no module in ``src/`` over 500 lines, no function over 80.

A function may be longer where its docstring says why, on a line of its own starting ``Long because:``
followed by the reason (e.g. "Long because: one linear recipe, cut into parts it would only be harder
to follow"). A function's length is counted from its ``def`` line to its last line, without its
docstring (explaining a function costs it nothing); nested functions count inside their parent too.
Modules have no such escape: a module over the limit is split. There is no list of tolerated
offenders: an offender is fixed, not listed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import metareward

SRC = Path(metareward.__file__).parent
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
REASON = "Long because:"


def function_length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` to the function's end, its docstring left out."""
    length = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        length -= first.end_lineno - first.lineno + 1
    return length


def gives_reason(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether the docstring has a line ``Long because: <reason>`` with a reason after the colon."""
    doc = ast.get_docstring(node) or ""
    return any(line.strip().startswith(REASON) and line.strip()[len(REASON):].strip() for line in doc.splitlines())


def offenders(source: str, name: str) -> list[tuple[str, str]]:
    """(key, what) of each size offence in one module's ``source``; ``name`` is its path."""
    found = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append((name, f"{name}: {lines} lines (at most {MAX_MODULE_LINES})"))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = function_length(node)
            if length > MAX_FUNCTION_LINES and not gives_reason(node):
                found.append((f"{name}:{node.name}", f"{name}:{node.lineno} {node.name}: {length} lines "
                              f"(at most {MAX_FUNCTION_LINES}, or a '{REASON}' line in its docstring)"))
    return found


def all_offenders() -> list[tuple[str, str]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC.parent).as_posix()
        out += offenders(path.read_text(encoding="utf-8"), name)
    return out


def test_no_module_or_function_over_the_limits():
    found = [what for _, what in all_offenders()]
    assert not found, "too long:\n" + "\n".join(found)


def _function(lines: int, doc: str | None = None) -> str:
    """A function ``f`` of ``lines`` lines without its docstring ``doc``."""
    body = "".join(f"    x{i} = {i}\n" for i in range(lines - 1))
    return "def f():\n" + (f'    """{doc}"""\n' if doc else "") + body


def test_limits_are_exact():
    assert offenders(_function(80), "m.py") == []
    assert [key for key, _ in offenders(_function(81), "m.py")] == ["m.py:f"]
    # the docstring is not counted
    long_doc = "What f does.\n" + "    more words\n" * 30
    assert len(_function(80, long_doc).splitlines()) == 112 and offenders(_function(80, long_doc), "m.py") == []
    assert offenders("x = 1\n" * 500, "m.py") == []
    assert [key for key, _ in offenders("x = 1\n" * 501, "m.py")] == ["m.py"]


def test_a_reason_in_the_docstring_allows_a_long_function():
    reason = "What f does.\n\n    Long because: one table of cases, read top to bottom.\n"
    assert offenders(_function(120, reason), "m.py") == []
    empty = "What f does.\n\n    Long because:\n"
    assert [key for key, _ in offenders(_function(120, empty), "m.py")] == ["m.py:f"]
    elsewhere = "What f does; it is long because it is.\n"
    assert [key for key, _ in offenders(_function(120, elsewhere), "m.py")] == ["m.py:f"]
    nested = "def outer():\n" + "\n".join("    " + line for line in _function(90).splitlines()) + "\n"
    assert sorted(key for key, _ in offenders(nested, "m.py")) == ["m.py:f", "m.py:outer"]
