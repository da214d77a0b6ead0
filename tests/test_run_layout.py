"""The run directory has one owner, ``metareward.layout``: its names, that opening a run creates nothing,
and that no other module in ``src/`` spells a run-directory name itself (read with ``ast``)."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest

import metareward
from metareward import layout
from metareward.errors import InputError
from metareward.files import atomic_write_json, atomic_write_lines, atomic_write_text
from metareward.layout import ARTIFACT_RECORDS, ARTIFACTS, PAIR_ARTIFACTS, RunLayout, iteration_label
from metareward.records import Prompt, write_jsonl_atomic
from metareward.store import IterationStore

PACKAGE = Path(metareward.__file__).parent

FORBIDDEN = re.compile(
    r"iter_"
    r"|(?<![\w.-])(?:" + "|".join(re.escape(f) for f in ARTIFACTS.values()) + r")"
    r"|manifest\.json|config\.yaml|^\.work$|(?:^|/)model/"
)
"""What a string in ``src/`` may not spell: an iteration folder name, an artifact's file, the manifest,
the resolved config, the work folder or a model folder path (``judge_prompts.jsonl`` is not an artifact)."""

RUN_FOLDERS = {"model", ".work", "eval", ".lock"}
"""Folder names that may not be joined onto a path (``path / "model"``) outside the layout."""


def _documentation(tree: ast.AST) -> set[int]:
    """The string statements of ``tree`` (module, class, function and attribute docstrings): prose that
    describes the layout may name its files; code may not."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        for stmt in body if isinstance(body, list) else []:  # a lambda's body is one expression
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
                found.add(id(stmt.value))
    return found


def run_directory_literals(source: str, name: str = "<source>") -> list[str]:
    """``name:line: literal`` for each string of code in ``source`` that names a run-directory file or folder."""
    tree = ast.parse(source)
    docs = _documentation(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if FORBIDDEN.search(node.value):
                hits.append(f"{name}:{node.lineno}: {node.value!r}")
        elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant)
              and node.right.value in RUN_FOLDERS):
            hits.append(f"{name}:{node.lineno}: / {node.right.value!r}")
    return sorted(hits)


def test_the_scanner_finds_literals_in_code_but_not_in_docstrings():
    source = '''
"""A module about iter_1/judgments.jsonl."""
def f(run, i):
    """Reads ``iter_<i>/manifest.json``."""
    a = run / f"iter_{i}" / "judgments.jsonl"
    b = run / "model"
    c = "judge_prompts.jsonl", "seed_prompts.jsonl", "iter_json_objects is not a path but is forbidden too"
    return run / "config.yaml", ".work", "x/model/y", "manifest.json"
'''
    hits = run_directory_literals(source)
    assert hits == sorted([
        "<source>:5: 'iter_'", "<source>:5: 'judgments.jsonl'", "<source>:6: / 'model'",
        "<source>:7: 'iter_json_objects is not a path but is forbidden too'",
        "<source>:8: 'config.yaml'", "<source>:8: '.work'", "<source>:8: 'x/model/y'", "<source>:8: 'manifest.json'",
    ])


def test_no_module_but_the_layout_names_a_run_directory_file():
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "layout.py":
            continue
        hits += run_directory_literals(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))
    assert hits == [], "ask metareward.layout instead:\n" + "\n".join(hits)


def test_names():
    run = RunLayout("runs/x")
    it = run.iteration(3)
    assert (it.dir, it.iteration) == (Path("runs/x/iter_3"), 3)
    assert it.artifact("judgments") == Path("runs/x/iter_3/judgments.jsonl")
    assert it.manifest == Path("runs/x/iter_3/manifest.json")
    assert it.model == run.model_of(3) == Path("runs/x/iter_3/model")
    assert it.chunk_log("judge_score", "ab12") == Path("runs/x/iter_3/.work/judge_score-ab12.chunks.jsonl")
    assert it.train_work("dpo") == Path("runs/x/iter_3/.work/dpo")
    assert (run.config, run.eval_dir) == (Path("runs/x/config.yaml"), Path("runs/x/eval"))
    assert iteration_label(12) == "iter_12" and layout.parse_iteration_label("iter_12") == 12
    assert [layout.parse_iteration_label(x) for x in ("iter_", "iter_x", "iter_1a", "xiter_1", "seed")] == [None] * 5
    with pytest.raises(ValueError, match="unknown artifact 'judgment'; one of prompts, responses"):
        it.artifact("judgment")


def test_every_artifact_has_a_record_class_and_pairs_are_artifacts():
    assert list(ARTIFACT_RECORDS) == list(ARTIFACTS)
    assert set(PAIR_ARTIFACTS) <= set(ARTIFACTS)
    assert all(dataclasses.is_dataclass(cls) for cls in ARTIFACT_RECORDS.values())


def test_iterations_on_disk(tmp_path):
    run = RunLayout(tmp_path / "run")
    assert run.iterations() == [] and run.iterations(with_sft=True) == []
    for name in ("iter_0", "iter_2", "iter_10", "iter_1", "iter_x", "eval"):
        (tmp_path / "run" / name).mkdir(parents=True)
    (tmp_path / "run" / "iter_3").write_text("a file, not an iteration")
    assert run.iterations() == [1, 2, 10]
    assert run.iterations(with_sft=True) == [0, 1, 2, 10]


def test_opening_a_run_creates_nothing(tmp_path):
    """Layouts, the manifest store and every read-only opener leave a missing run directory missing."""
    from metareward.api import iterations, read_records
    from metareward.drift import read_eval, summary_alarms
    from metareward.evaluation.diagnostics import diagnose_run
    from metareward.report.examples import run_settings

    root = tmp_path / "run"
    it = RunLayout(root).iteration(1)
    store = IterationStore(it)
    assert store.manifest == {"stages": {}} and not store.stage_done("actor", "h")
    assert summary_alarms(root, 1) == [] and read_eval(root) is None
    assert run_settings(root).model == ""
    with pytest.raises(InputError):
        diagnose_run(root)
    with pytest.raises(InputError):
        iterations(root)
    with pytest.raises(InputError, match="not found"):
        read_records(root, 1, "judgments")
    assert not root.exists()
    store.mark_done("prompts", "h", 2, 0.5)  # the first write creates the folder
    assert json.loads(it.manifest.read_text())["stages"]["prompts"] == {
        "done": True, "settings": "h", "count": 2, "seconds": 0.5}
    assert IterationStore(it).stage_done("prompts", "h")
    with pytest.raises(InputError, match="stage 'prompts' already ran with different settings"):
        IterationStore(it).stage_done("prompts", "other")


def test_atomic_writes_leave_whole_files_and_no_temp(tmp_path):
    target = tmp_path / "a" / "b.jsonl"
    assert atomic_write_lines(target, ["x\n", "y\n"]) == 2 and target.read_text() == "x\ny\n"
    atomic_write_text(target, "z")
    atomic_write_json(tmp_path / "c.json", {"p": Path("q")})
    assert target.read_text() == "z" and (tmp_path / "c.json").read_text() == '{\n  "p": "q"\n}\n'
    assert write_jsonl_atomic(target, [Prompt(id="p1", text="é"), Prompt(id="p2", text="")]) == 2
    assert target.read_bytes() == '{"id": "p1", "text": "é"}\n{"id": "p2", "text": ""}\n'.encode()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.jsonl", "c.json"]
