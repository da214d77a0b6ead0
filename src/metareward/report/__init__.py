"""Self-contained HTML pages about runs: ``metareward report RUN_DIR`` and ``metareward report RUN_A RUN_B ...``.

* ``page``: one run -- drift alarms, iteration table, score/length/pair/bias figures, per-step training
  curves, examples that follow a prompt from its responses to its pairs, and eval results;
* ``compare``: several runs on one page with a legend (Meta-Rewarding vs Self-Rewarding);
* ``figures``, ``curves``, ``examples``: the sections; ``html``: the building blocks (embedded PNGs,
  tables, folded text, inline CSS and script: no external resources).
"""

from metareward.report.compare import COMPARE_FIGURES, build_compare, write_compare
from metareward.report.figures import EVAL_FIGURES, EVAL_TABLES, RUN_FIGURES, RUN_TABLES
from metareward.report.page import build_report, write_report

__all__ = [
    "COMPARE_FIGURES",
    "EVAL_FIGURES",
    "EVAL_TABLES",
    "RUN_FIGURES",
    "RUN_TABLES",
    "build_compare",
    "build_report",
    "write_compare",
    "write_report",
]
