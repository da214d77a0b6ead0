"""The report's judge-accuracy section: accuracy with intervals beside each iteration's mean judge score,
the injection table, published figures, the score-inflation alarm reading the accuracy, the comparison page."""

from __future__ import annotations

import json
import re

from test_eval_diagnostics import fake_run

from metareward.evaluation.diagnostics import diagnose_run
from metareward.report import COMPARE_FIGURES, build_compare, build_report
from metareward.report.html import fmt


def modes(pointwise: float, pairwise: float) -> dict:
    def block(acc):
        return {"overall": {"accuracy": acc, "accuracy_ci95": [acc - 0.1, acc + 0.1]}}

    return {"pointwise": block(pointwise), "pairwise": block(pairwise)}


def judge_eval(run, seed: float, iter_1: float) -> None:
    """An eval.json with the llmbar and judge-injection suites (pointwise accuracies as given)."""
    inj = {m: {"overall": {"accuracy": 0.5, "accuracy_ci95": [0.4, 0.6]},
               "prefers_worse": {"plain": 0.4, "injected": 0.65, "change": 0.25,
                                 "by_kind": {"score": {"n": 4, "plain": 0.5, "injected": 0.75}}}}
           for m in ("pointwise", "pairwise")}
    ev = {"models": {}, "options": {}, "results": {"seed": {}, "iter_1": {}, "iter_2": {}},
          "suites": {"llmbar": {"kind": "judge_accuracy", "n": 40, "of": 419,
                                "results": {"seed": modes(seed, 0.5), "iter_1": modes(iter_1, 0.525),
                                            "iter_2": modes(0.6, 0.55)}},
                     "judge-injection": {"kind": "judge_accuracy", "n": 80, "of": 100, "results": {"seed": inj}}}}
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "eval.json").write_text(json.dumps(ev))


def cells(page: str, name: str) -> list[str]:
    body = page.split(f'data-table="{name}"', 1)[1].split("</table>", 1)[0]
    return re.findall(r"<td>([^<]*)</td>", body)


def test_accuracy_beside_each_iterations_mean_judge_score(tmp_path):
    run = fake_run(tmp_path / "run")
    judge_eval(run, seed=0.5, iter_1=0.505)
    page = build_report(run)
    d1, d2 = diagnose_run(run)
    assert cells(page, "judge-accuracy") == [
        "1", "seed", fmt(d1.score_mean), "0.0%", "50.0% [40.0%, 60.0%]", "50.0% [40.0%, 60.0%]",
        "2", "iter_1", fmt(d2.score_mean), "0.0%", "50.5% [40.5%, 60.5%]", "52.5% [42.5%, 62.5%]",
        "–", "iter_2", "–", "–", "60.0% [50.0%, 70.0%]", "55.0% [45.0%, 65.0%]",
    ]
    assert cells(page, "judge-injection") == [
        "seed", "pointwise", "40.0%", "65.0%", "+25.0 points", "score 75.0% (n=4)",
        "seed", "pairwise", "40.0%", "65.0%", "+25.0 points", "score 75.0% (n=4)",
    ]
    published = cells(page, "judge-published")
    assert published[:5] == ["SPaR (arXiv 2412.11605)", "LLMBar accuracy", "Llama-3-8B-Instruct",
                             "the model itself, seed", "53.8%"]
    assert "67.4%" in published and "66.64" not in published and "66.6%" in published
    assert 'data-figure="judge-accuracy"' in page
    # iteration 2's scores rose while the judge's accuracy stayed flat: the alarm names the accuracy
    assert ("while judge accuracy on llmbar (pointwise) was flat: 50.0% (seed) -&gt; 50.5% (iter_1)" in page)


def test_rising_accuracy_quiets_the_inflation_alarm(tmp_path):
    run = fake_run(tmp_path / "run")
    judge_eval(run, seed=0.5, iter_1=0.58)
    page = build_report(run)
    assert 'data-alarm="score_inflation"' not in page


def test_without_judge_suites_the_section_says_how_to_get_them(tmp_path):
    run = fake_run(tmp_path / "run")
    page = build_report(run)
    assert "No judge suite in eval.json yet" in page
    assert cells(page, "judge-accuracy")[:2] == ["1", "seed"]
    assert 'data-figure="judge-accuracy"' not in page


def test_comparison_page_has_the_accuracy_figure_and_tables(tmp_path):
    a = fake_run(tmp_path / "a")
    b = fake_run(tmp_path / "b", seed=1)
    judge_eval(a, 0.5, 0.6)
    page = build_compare([a, b])
    assert "compare-judge-accuracy" in COMPARE_FIGURES and 'data-figure="compare-judge-accuracy"' in page
    assert page.count('data-table="judge-accuracy"') == 2
    assert "60.0% [50.0%, 70.0%]" in page
