"""``metareward report``: every figure and table present; the page renders in headless Chromium."""

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
from metareward.report import EVAL_FIGURES, EVAL_TABLES, RUN_FIGURES, RUN_TABLES, build_report, write_report

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


def figures(page: str) -> dict[str, bytes]:
    found = re.findall(r'<img data-figure="([\w-]+)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return {name: base64.b64decode(data) for name, data in found}


def test_every_figure_and_table_present(tmp_path):
    run = fake_run(tmp_path / "run")
    fake_eval(run)
    page = build_report(run)
    figs = figures(page)
    assert set(figs) == set(RUN_FIGURES) | set(EVAL_FIGURES)
    assert all(png.startswith(PNG_MAGIC) and len(png) > 5000 for png in figs.values())
    tables = re.findall(r'<table data-table="([\w-]+)"', page)
    assert sorted(tables) == sorted(RUN_TABLES + EVAL_TABLES)
    assert "56.2 [37.5, 75]" in page and "68.8 [50, 87.5]" in page  # win rates with intervals
    assert "src=\"http" not in page and "<script" not in page  # self-contained, no external resources


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
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and "written" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_bad_eval_json(tmp_path):
    run = hand_made_run(tmp_path)
    (run / "eval.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="eval.json: results"):
        build_report(run)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_renders_in_headless_chromium(tmp_path):
    run = fake_run(tmp_path / "run")
    fake_eval(run)
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
