"""The paper's benchmarks offline, with any judge: ``metareward eval --suite ...``.

* ``alpacaeval2`` (``alpacaeval``): AlpacaEval 2's weighted GPT-4 Turbo annotator protocol;
* ``arena-hard-v2`` (``arena_hard``, ``bradley_terry``): Arena-Hard v2.0 with BT scores and style control;
* ``ifeval`` (``ifeval``): IFEval, checked by code;
* ``mtbench``: the existing pairwise win rate (``evaluation.winrate``) on MT-Bench's first turns;
* ``llmbar``, ``human-pref``, ``judge-injection`` (``judge_bench``, ``judge_bench_judging``): each
  model *as a judge*, against gold labels (LLMBar, human votes), pointwise and pairwise.

``data`` reads the benchmarks from installed packages, ``annotation_cache`` keeps every judgment in the
eval folder, ``run`` ties them to ``metareward eval``; ``evaluation.suite_report`` renders the results.
"""

SUITES = ("alpacaeval2", "arena-hard-v2", "ifeval", "mtbench", "llmbar", "human-pref", "judge-injection")
