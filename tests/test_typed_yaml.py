"""The generic typed-YAML reader on its own dataclasses (the run config's use of it: test_config.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from metareward.errors import InputError
from metareward.typed_yaml import build, check_type, errors_in, parse_override, read_yaml, set_dotted


@dataclass
class Inner:
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    count: int = 1
    flag: bool = False
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)
    items: list[Inner] = field(default_factory=list)


def test_build_checks_and_converts_every_value():
    out = build(Outer, {"count": 3, "limit": None, "inner": {"rate": 2}, "items": [{"mode": "b"}, None]}, "")
    assert out == Outer(count=3, limit=None, inner=Inner(rate=2.0), items=[Inner(mode="b"), Inner()])
    assert type(out.inner.rate) is float
    assert build(Outer, None, "") == Outer()


@pytest.mark.parametrize(("data", "message"), [
    ({"count": True}, "count: expected an integer, got True"),
    ({"count": 1.5}, "count: expected an integer, got 1.5"),
    ({"flag": 1}, "flag: expected true or false, got 1"),
    ({"name": 3}, "name: expected a string, got 3"),
    ({"limit": "ten"}, "limit: expected int or null, got 'ten'"),
    ({"inner": {"rate": False}}, "inner.rate: expected a number, got False"),
    ({"inner": {"mode": "c"}}, "inner.mode: must be one of ['a', 'b'], got 'c'"),
    ({"inner": 4}, "inner: expected a mapping, got 4"),
    ({"items": {"mode": "a"}}, "items: expected a list, got {'mode': 'a'}"),
    ({"items": [{}, {"rate": "x"}]}, "items[1].rate: expected a number, got 'x'"),
    ({"inner": {"size": 1}}, "inner.size: unknown field (known: mode, rate)"),
    ({"colour": 1}, "colour: unknown field (known: count, flag, inner, items, limit, name)"),
])
def test_errors_name_the_field_path(data, message):
    with pytest.raises(InputError) as e:
        build(Outer, data, "")
    assert str(e.value) == message


def test_a_top_level_non_mapping_and_an_unsupported_annotation():
    with pytest.raises(InputError, match=r"^config: expected a mapping, got \[1\]$"):
        build(Outer, [1], "")
    with pytest.raises(TypeError, match="unsupported config type <class 'bytes'> at x"):
        check_type(b"", bytes, "x")
    with pytest.raises(InputError, match=r"^x: expected null, got 0$"):
        check_type(0, type(None), "x")


def test_errors_in_prefixes_input_errors_only():
    with pytest.raises(InputError) as e, errors_in("configs/x.yaml"):
        build(Outer, {"count": "two"}, "")
    assert str(e.value) == "configs/x.yaml: count: expected an integer, got 'two'"
    with pytest.raises(ValueError, match="^other$"), errors_in("f.yaml"):
        raise ValueError("other")


def test_set_dotted_and_parse_override():
    data = {"iterations": [{"rho": 0}, {"rho": 0}]}
    set_dotted(data, "iterations.1.rho", 0.25)
    set_dotted(data, "engine.threads", 2)
    assert data == {"iterations": [{"rho": 0}, {"rho": 0.25}], "engine": {"threads": 2}}
    with pytest.raises(InputError, match=r"^--set iterations\.2\.rho: iterations has no item 2$"):
        set_dotted(data, "iterations.2.rho", 0.1)
    assert parse_override("engine.threads = 2") == ("engine.threads", 2)
    assert parse_override("judge.template=null") == ("judge.template", None)
    assert parse_override("run_dir=a=b") == ("run_dir", "a=b")
    with pytest.raises(InputError, match=r"^--set 'threads': expected KEY=VALUE"):
        parse_override("threads")


def test_read_yaml_names_the_file_and_line(tmp_path):
    assert read_yaml(_write(tmp_path / "empty.yaml", "")) == {}
    assert read_yaml(_write(tmp_path / "ok.yaml", "a: [1, 2]\n")) == {"a": [1, 2]}
    bad = _write(tmp_path / "bad.yaml", "a: 1\nb: [2\nc: 3\n")
    with pytest.raises(InputError) as e:
        read_yaml(bad)
    assert str(e.value) == f"{bad}:3: invalid YAML (expected ',' or ']', but got ':')"  # where YAML noticed
    with pytest.raises(InputError, match=r"missing.yaml: config file not found$"):
        read_yaml(tmp_path / "missing.yaml")


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path
