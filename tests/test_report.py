"""``metareward report``: every figure, table, example and alarm present with exact values; several runs on
one page; the page renders in headless Chromium (the network check is in ``test_report_browser.py``)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from test_eval_diagnostics import fake_run, hand_made_run

from metareward.cli import main
from metareward.errors import InputError
from metareward.report import (
    COMPARE_FIGURES,
    EVAL_FIGURES,
    EVAL_TABLES,
    RUN_FIGURES,
    RUN_TABLES,
    build_compare,
    build_report,
    write_report,
)
from metareward.report.curves import read_train_log
from metareward.report.examples import sample_ids
from metareward.training.common import TrainLog

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_eval(run_dir) -> None:
    ev = {
        "models": {"seed": "smollm2-135m", "iter_1": "x", "iter_2": "y"},
        "options": {"prompt_set": "mtbench", "baseline": "seed", "agreement_set": "known-order"},
        "prompt_set": {"name": "mtbench", "prompts": 8},
        "results": {
            "seed": {"length": {"mean": 700.0, "lengths": [500, 700, 900]},
                     "agreement": {"agreement": 0.5, "agreement_without_ties": 0.6, "spearman": 0.3, "parse_rate": 0.9}},
            "iter_1": {"length": {"mean": 800.0, "lengths": [600, 800, 1000]},
                       "winrate": {"baseline": "seed", "win_rate": 56.25, "win_rate_ci95": [37.5, 75.0],
                                   "lc_win_rate": 52.0, "lc_win_rate_ci95": [30.1, 70.2], "wins": 4, "ties": 1, "losses": 3}},
            "iter_2": {"length": {"mean": 900.0, "lengths": [700, 900, 1100]},
                       "winrate": {"baseline": "seed", "win_rate": 68.75, "win_rate_ci95": [50.0, 87.5],
                                   "lc_win_rate": 61.0, "lc_win_rate_ci95": [40.0, 80.0], "wins": 5, "ties": 1, "losses": 2},
                       "ifbench": {"prompt_strict": 0.125, "instruction_loose": 0.2}},
        },
    }
    (run_dir / "eval").mkdir(exist_ok=True)
    (run_dir / "eval" / "eval.json").write_text(json.dumps(ev))


def fake_train_logs(run_dir, steps: int = 6) -> None:
    """Per-step DPO metrics as the trainers write them (loss falling, margins growing)."""
    for i in (1, 2):
        log = TrainLog(run_dir / f"iter_{i}" / "train_log.jsonl")
        for s in range(1, steps + 1):
            log.append({"step": s, "epoch": s / steps, "loss": 0.7 - 0.05 * s / i, "rewards/chosen": 0.01 * s,
                        "rewards/rejected": -0.01 * s, "rewards/margins": 0.02 * s, "rewards/accuracies": 0.5 + 0.05 * s,
                        "learning_rate": 5e-6 * (1 - s / steps), "grad_norm": 10.0 / s, "tokens_per_s": 800.0 + s,
                        "elapsed_s": 2.0 * s})


def figures(page: str) -> dict[str, bytes]:
    found = re.findall(r'<img data-figure="([\w-]+)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return {name: base64.b64decode(data) for name, data in found}


def test_every_figure_and_table_present(tmp_path):
    run = fake_run(tmp_path / "run")
    fake_eval(run)
    fake_train_logs(run)
    page = build_report(run)
    figs = figures(page)
    assert set(figs) == set(RUN_FIGURES) | set(EVAL_FIGURES) | {"training-curves"}
    assert all(png.startswith(PNG_MAGIC) and len(png) > 5000 for png in figs.values())
    tables = re.findall(r'<table data-table="([\w-]+)"', page)
    # examples: 8 of 12 prompts per iteration, each with a response table and a battle matrix
    assert sorted(set(tables)) == sorted({*RUN_TABLES, *EVAL_TABLES, "training", "responses", "battle-matrix"})
    assert tables.count("responses") == 16 and tables.count("battle-matrix") == 16
    assert len(re.findall(r"<details class=\"example\" data-example", page)) == 16
    assert "56.2 [37.5, 75]" in page and "68.8 [50, 87.5]" in page  # win rates with intervals
    # self-contained: no external resources, only the one inline script
    assert not re.search(r'(src|href)="(?!data:|#)', page) and "url(" not in page
    assert page.count("<script>") == 1 and "<script src" not in page
    # drift: iteration 2's scores rose; the eval has no agreement for iter_1 (its judge)
    assert 'data-alarm="score_inflation"' in page
    assert "judge agreement unknown (no eval.json agreement for iter_1: run metareward eval)" in page
    training = page.split('data-table="training"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<td>([^<]*)</td>", training) == [
        "1", "6", "0.65", "0.4", "0.12", "80.0%", "804", "10", "2", "6", "0.675", "0.55", "0.12", "80.0%", "804", "10"]


def test_report_without_eval_and_exact_bias_table(tmp_path):
    page = build_report(hand_made_run(tmp_path))
    assert set(figures(page)) == set(RUN_FIGURES)
    assert "No eval.json found" in page
    bias = page.split('data-table="meta-bias"', 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<td>([^<]*)</td>", bias)
    # iter, n, no verdict, first position, equal scores, score bias, diff-score n, both decisive, flips
    assert cells == ["1", "7", "14.3%", "66.7%", "50.0%", "33.3%", "3", "2", "50.0%"]


def test_cli_report(tmp_path, capsys):
    run = fake_run(tmp_path / "run", iterations=1)
    assert main(["report", str(run), "--examples", "1", "--prompt", "p011"]) == 0
    assert (run / "report.html").is_file() and "written" in capsys.readouterr().out
    shown = re.findall(r'data-example data-prompt="(\w+)"', (run / "report.html").read_text())
    assert shown == sorted({*sample_ids([f"p{i:03d}" for i in range(12)], 1, 1), "p011"})
    assert main(["report", str(run), "--examples", "all", "--out", str(tmp_path / "all.html")]) == 0
    assert len(re.findall(r"data-example ", (tmp_path / "all.html").read_text())) == 12
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    other = fake_run(tmp_path / "other", iterations=1, seed=1)
    assert main(["report", str(run), str(other)]) == 2
    assert "--out: required when comparing" in capsys.readouterr().err
    assert main(["report", str(run), str(other), "--out", str(tmp_path / "c.html")]) == 0
    assert "compare-scores" in (tmp_path / "c.html").read_text()
    with pytest.raises(SystemExit):
        main(["report", str(run), "--examples", "some"])


def test_sample_ids_fixed_and_extended():
    ids = [f"p{i:02d}" for i in range(20)]
    assert sample_ids(ids, 3, 1) == ["p02", "p04", "p18"]  # random.Random(0 + iteration).sample
    assert sample_ids(reversed(ids), 3, 1) == ["p02", "p04", "p18"]  # input order does not matter
    assert sample_ids(ids, 3, 2, ["p19", "nope"]) == ["p01", "p02", "p18", "p19"]
    assert sample_ids(ids, None, 1) == ids and sample_ids(ids, 0, 1) == []


def cells(page: str, table: str, nth: int = 0) -> list[str]:
    part = page.split(f'data-table="{table}"')[nth + 1].split("</table>", 1)[0]
    return [" ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in re.findall(r"<td>(.*?)</td>", part)]


def test_examples_exact_values(tmp_path):
    page = build_report(hand_made_run(tmp_path))
    # p1: responses with their judgment scores and mean, tiers (rho 0) and roles
    assert cells(page, "responses", 0) == [
        "p1/r0", "10", "4 2 4 invalid", "3.33", "top tier chosen meta-judged",
        "p1/r1", "20", "3 3", "3", "bottom tier rejected"]
    assert "S_max 3.33, S_min 3; ρ = 0: top tier = score ≥ 3.33" in page
    # battle matrix of p1/r0 with the iteration's weights, over battles between validly scored judgments
    # (as the pairs stage: j3's battle is left out): 3 first-position and 2 second-position wins, so
    # ω1 = 2/5 and ω2 = 3/5; B[j2][j0] = ω2 (j0-j2 B) + ω1 (j2-j0 A) = 1
    assert "ω1 = 0.4 (a first-position win), ω2 = 0.6" in page
    matrix = cells(page, "battle-matrix")
    assert [row[:-1] for row in (matrix[0:5], matrix[5:10], matrix[10:15])] == [
        ["j0 (4)", "·", "0.40", "0.00"],
        ["j1 (2)", "0.40", "·", "0.60"],
        ["j2 (4)", "1.00", "0.00", "·"],
    ]
    elo = [float(matrix[k]) for k in (4, 9, 14)]
    assert elo.index(min(elo)) == 0  # j0 won 0.4 and lost 1.4
    top = f"p1/r0/j{elo.index(max(elo))}"
    # the hand-made judge pair (j0 over j1) is not what the battle matrix gives: the page says so
    assert f"The recomputed ε ranks {top} first, not the recorded chosen judgment" in page
    # p2: no actor pair in the file, though its scores (5 vs 4.75) give one; no meta-judged response
    assert "No actor pair: <b>not in the pairs file, although recomputing the selection gives one" in page
    assert "Judge pair: none — no response was meta-judged" in page


def test_examples_of_a_self_rewarding_run_and_a_skip_reason(tmp_path):
    run = hand_made_run(tmp_path)
    (run / "config.yaml").write_text("mode: self-rewarding\nseed: 3\niterations:\n  - rho: 0.5\n")
    (run / "iter_1" / "meta_judgments.jsonl").unlink()
    (run / "iter_1" / "actor_pairs.jsonl").write_text("")
    page = build_report(run)
    assert "mode <code>self-rewarding</code>" in page
    assert "ρ = 0.5: top tier = score ≥ 3.17" in page  # (3.33 + 3) / 2
    assert page.count("Judge pair: none — self-rewarding run: no meta-judge, no judge pairs") == 2
    # the emptied pairs file vs the recomputed pairs (p1: r0 over r1, p2: r0 over r1)
    assert page.count("No actor pair: <b>not in the pairs file, although recomputing") == 2
    # scores all equal: the recomputed skip reason is shown
    judgments = run / "iter_1" / "judgments.jsonl"
    judgments.write_text(re.sub(r'"score": [0-9.]+', '"score": 3.0', judgments.read_text()))
    assert build_report(run).count("No actor pair: <b>all_scores_equal</b>") == 2


def test_training_curves_and_bad_train_log(tmp_path):
    run = hand_made_run(tmp_path)
    assert "No <code>train_log.jsonl</code> in any iteration" in build_report(run)
    log = run / "iter_1" / "train_log.jsonl"
    log.write_text('{"step": 1, "loss": 0.69}\n{"step": 2, "loss": 0.6}\n{"step": 3, "lo')
    assert [r["step"] for r in read_train_log(log)] == [1, 2]  # a line being written is skipped
    assert "training-curves" in figures(build_report(run))
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(InputError, match=r"train_log.jsonl:2: invalid JSON"):
        build_report(run)


def test_eval_suites_fragment_is_included(tmp_path, monkeypatch):
    import sys
    import types

    run = fake_run(tmp_path / "run", iterations=1)
    fake_eval(run)
    mod = types.ModuleType("metareward.evaluation.suite_report")
    mod.render_suites = lambda ev: f'<div id="suites">{len(ev["results"])} models</div>'
    monkeypatch.setitem(sys.modules, "metareward.evaluation.suite_report", mod)
    assert '<div id="suites">3 models</div>' in build_report(run)


def test_compare_two_runs(tmp_path):
    a = fake_run(tmp_path / "a" / "tiny")
    b = fake_run(tmp_path / "b" / "tiny", seed=1)
    fake_eval(a)
    fake_train_logs(a)
    (b / "config.yaml").write_text("model: smollm2-135m\nmode: self-rewarding\n")
    page = build_compare([a, b])
    assert set(figures(page)) == set(COMPARE_FIGURES)
    legend = cells(page, "legend")
    assert legend[:5] == ["a/tiny", "meta-rewarding", "smollm2-135m", "0", "2"]
    assert legend[6:11] == ["b/tiny", "self-rewarding", "smollm2-135m", "0", "2"]
    assert page.count('data-table="iterations"') == 2 and page.count('data-table="eval"') == 1
    assert cells(page, "config-diff") == ["mode", "–", "self-rewarding"]  # a's config.yaml has no mode
    assert "No eval.json in this run." in page
    with pytest.raises(InputError, match="at least two"):
        build_compare([a])
    with pytest.raises(InputError, match="given twice"):
        build_compare([a, tmp_path / "a" / "x" / ".." / "tiny"])


def test_bad_eval_json(tmp_path):
    run = hand_made_run(tmp_path)
    (run / "eval.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="eval.json: results"):
        build_report(run)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_renders_in_headless_chromium(tmp_path):
    run = fake_run(tmp_path / "run")
    fake_eval(run)
    fake_train_logs(run)
    page = write_report(run)
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
           page.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    from matplotlib.image import imread

    img = imread(shot)[..., :3]
    assert img.shape[:2] == (3000, 1200)
    non_white = np.mean(np.any(img < 0.95, axis=-1))
    assert non_white > 0.05  # text, tables and plots, not a blank page
    # the plots decoded and drew: a good share of rows carry coloured (non-grey) pixels
    coloured = np.abs(img[..., 0] - img[..., 2]) > 0.2
    assert np.mean(coloured.any(axis=1)) > 0.1
