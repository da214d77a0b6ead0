"""The README's Python example runs, the public API keeps its shape, and the docs' references hold.

* The ``python`` block under the README's "## Python API" heading is executed as written, on the
  fake engine (``tests/fakes.py``) with DPO replaced by a stub (real DPO is tested elsewhere), in a
  temporary folder holding a copy of ``configs/tiny-cpu.yaml`` whose model is a placeholder folder
  (so no model is loaded or dequantized). If the API the example uses changes, this test fails.
* ``import metareward`` imports neither torch nor the config machinery (the API resolves lazily).
* Every section of the method the code cites (``spec §x.y`` or ``docs/method.md §x.y``) is a heading
  of ``docs/method.md``, and every relative link of the README points at a file that exists.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fakes import FakeEngine

import metareward
from metareward.errors import InputError
from metareward.records import PreferencePair

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
METHOD = ROOT / "docs" / "method.md"


def readme_python_example() -> str:
    """The first ```python block after the '## Python API' heading."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python API", 1)
    assert len(section) == 2, "README.md has no '## Python API' section"
    match = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert match, "README.md's '## Python API' section has no ```python block"
    return match.group(1)


def _fake_dpo(model_path, pairs, out_dir, cfg, work_dir=None, threads=0):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text("{}")
    (out / "pairs.json").write_text(json.dumps([p.id for p in pairs]))
    return {"pairs": len(pairs)}


@pytest.fixture
def example_dir(tmp_path, monkeypatch):
    """A working folder with configs/tiny-cpu.yaml (placeholder model, native DPO) and the fakes wired in."""
    model = tmp_path / "placeholder-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = yaml.safe_load((ROOT / "configs" / "tiny-cpu.yaml").read_text(encoding="utf-8"))
    data["model"] = str(model)
    data.setdefault("training", {})["backend"] = "native"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny-cpu.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")

    engines: list[str] = []

    def fake_make_engine(cfg, model_path, log_dir=None):
        engines.append(model_path)
        return FakeEngine()

    import metareward.engines
    import metareward.loop
    import metareward.training.dpo_native

    monkeypatch.setattr(metareward.engines, "make_engine", fake_make_engine)
    monkeypatch.setattr(metareward.loop, "make_engine", fake_make_engine, raising=False)
    monkeypatch.setattr(metareward.training.dpo_native, "train_dpo_native_from_path", _fake_dpo)
    monkeypatch.chdir(tmp_path)
    return tmp_path, engines


def test_readme_python_example_runs(example_dir, capsys):
    folder, engines = example_dir
    code = readme_python_example()
    assert len(code.strip().splitlines()) <= 12, "keep the README's example about 10 lines"
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, str(README) + ":Python API", "exec"), namespace)

    cfg = namespace["cfg"]
    run_dir = folder / cfg.run_dir
    assert run_dir.is_dir() and run_dir.resolve().is_relative_to(folder.resolve())
    summaries = namespace["summaries"]
    assert len(summaries) == len(cfg.iterations) == 2
    assert engines, "the example did not go through the engine factory"
    # the pairs the example read are exactly iteration 1's files, actor pairs first
    pairs = namespace["pairs"]
    on_disk = [json.loads(line) for name in ("actor_pairs", "judge_pairs")
               for line in (run_dir / "iter_1" / f"{name}.jsonl").read_text().splitlines()]
    assert [p.id for p in pairs] == [d["id"] for d in on_disk]
    assert pairs and all(isinstance(p, PreferencePair) for p in pairs)
    assert summaries[0]["actor_pairs"] + summaries[0]["judge_pairs"] == len(pairs)
    out = capsys.readouterr().out
    assert f"iteration 1: {summaries[0]['actor_pairs']} actor pairs" in out


def test_readme_yaml_example_is_a_valid_config(tmp_path):
    section = README.read_text(encoding="utf-8").split("\n## Configuration", 1)
    assert len(section) == 2, "README.md has no '## Configuration' section"
    match = re.search(r"```yaml\n(.*?)```", section[1], re.S)
    assert match, "README.md's '## Configuration' section has no ```yaml block"
    path = tmp_path / "example.yaml"
    path.write_text(match.group(1), encoding="utf-8")
    cfg = metareward.load_config(path)
    assert cfg.engine.name == "vllm" and cfg.actor.k == 7 and cfg.judge.n == 11
    assert [it.rho for it in cfg.iterations] == [0.0, 0.32]
    assert [it.judge_max_chosen_length for it in cfg.iterations] == [1100, 1000]


def test_run_resumes_and_reads_every_iteration(example_dir):
    folder, engines = example_dir
    cfg = metareward.load_config("configs/tiny-cpu.yaml", {"run_dir": "runs/r", "iterations.0.prompts": 3})
    assert cfg.iterations[0].prompts == 3
    first = metareward.run(cfg, echo=None)
    n_engines = len(engines)
    again = metareward.run("configs/tiny-cpu.yaml", overrides={"run_dir": "runs/r", "iterations.0.prompts": 3},
                           echo=None)
    assert again == first
    assert len(engines) == n_engines, "a finished run must not build an engine again"
    every = metareward.read_pairs("runs/r")
    per_iteration = metareward.read_pairs("runs/r", 1) + metareward.read_pairs("runs/r", 2)
    assert [p.id for p in every] == [p.id for p in per_iteration]
    judge_only = metareward.read_pairs("runs/r", 1, kind="judge")
    assert all(p.kind == "judge" for p in judge_only)
    assert len(judge_only) == first[0]["judge_pairs"]
    judgments = metareward.read_records("runs/r", 2, "judgments")
    assert len(judgments) == first[1]["judgments"]


def test_api_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match="run directory not found"):
        metareward.read_pairs(tmp_path / "nowhere")
    (tmp_path / "iter_1").mkdir()
    with pytest.raises(InputError, match=r"iter_1/actor_pairs\.jsonl: not found"):
        metareward.read_pairs(tmp_path, 1)
    assert metareward.read_pairs(tmp_path) == []  # no iteration has finished its pairs yet
    with pytest.raises(ValueError, match="kind must be"):
        metareward.read_pairs(tmp_path, 1, kind="both")
    with pytest.raises(ValueError, match="unknown artifact"):
        metareward.read_records(tmp_path, 1, "model")
    cfg = metareward.RunConfig(prompts="builtin:seed_prompts")
    with pytest.raises(TypeError, match="overrides apply to a config path"):
        metareward.run(cfg, overrides={"seed": 1})


def test_public_names_resolve_lazily():
    code = (
        "import sys, metareward\n"
        "assert 'torch' not in sys.modules, 'import metareward imported torch'\n"
        "assert 'metareward.config' not in sys.modules, 'import metareward imported the config'\n"
        "assert set(metareward.__all__) <= set(dir(metareward))\n"
        "try:\n    metareward.no_such_name\nexcept AttributeError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "has no attribute 'no_such_name'" in out
    from metareward import api, config, records

    assert metareward.load_config is api.load_config and metareward.RunConfig is config.RunConfig
    assert metareward.PreferencePair is records.PreferencePair and metareward.read_pairs is api.read_pairs


def _cited_sections() -> dict[str, list[str]]:
    """Section numbers of the method cited in code, configs and docs -> where ('file:line').

    Every ``§`` in these files cites the method (``spec §x.y``, later ``docs/method.md §x.y``); a range
    (``§3.4-3.5``, ``§2–§4``) cites both ends."""
    cited: dict[str, list[str]] = {}
    citation = re.compile(r"§\s*\d+(?:\.\d+)?(?:\s*[-–]\s*§?\d+(?:\.\d+)?)?")
    files = [p for folder in ("src/metareward", "tests", "benchmarks", "configs", "docs")
             for p in sorted((ROOT / folder).rglob("*"))] + [README]
    for path in files:
        if path.suffix not in (".py", ".yaml", ".md", ".txt") or not path.is_file() or path == METHOD:
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for m in citation.finditer(line):
                for sec in re.findall(r"\d+(?:\.\d+)?", m.group(0)):
                    cited.setdefault(sec, []).append(f"{path.relative_to(ROOT)}:{lineno}")
    return cited


def test_every_cited_method_section_is_a_heading_of_docs_method():
    headings = set(re.findall(r"^#{2,4} (\d+(?:\.\d+)?)[ .]", METHOD.read_text(encoding="utf-8"), re.M))
    cited = _cited_sections()
    assert {"1.1", "2.4", "3.4", "4.2", "5.5"} <= set(cited), "the citation scan found too little"
    missing = {sec: where[:3] for sec, where in cited.items() if sec not in headings}
    assert not missing, f"cited but not a heading of docs/method.md: {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_between_readme_and_docs_resolve():
    """Every relative link of README.md and docs/*.md names an existing file, and its #anchor a heading."""
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and path.suffix == ".md":
                slugs = {_slug(h) for h in re.findall(r"^#+ (.*)$", path.read_text(encoding="utf-8"), re.M)}
                if anchor not in slugs:
                    broken.append(f"{page.name}: {target}#{anchor}")
    assert not broken, f"broken links: {broken}"


def test_readme_links_exist():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220, "the README is a front door: keep it near 200 lines"
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links into docs/"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
