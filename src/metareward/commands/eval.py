"""``metareward eval``: judge agreement, win rates (+ LC), instruction following, lengths, benchmark suites.

Examples::

    metareward eval --run-dir runs/tiny                         # seed + every iteration, all parts
    metareward eval --run-dir runs/tiny --parts winrate,length --limit 20
    metareward eval --models seed=smollm2-135m mine=path/to/model --parts agreement --scoring constrained
    metareward eval --run-dir runs/tiny --baseline reference:mtbench-gpt4 --judge path/to/strong-judge
    metareward eval --run-dir runs/tiny --suite alpacaeval2,arena-hard-v2,ifeval --limit 16   # embedded judge: a proxy
    metareward eval --run-dir runs/tiny --suite alpacaeval2 --limit 0 \
        --judge gpt-4-1106-preview --judge-engine openai --judge-base-url https://api.openai.com/v1

Suites (AlpacaEval 2, Arena-Hard v2.0, IFEval, MT-Bench win rate) are read from installed packages;
judgments are cached in OUT/annotations.jsonl (reruns and new models reuse them); ``--limit N`` takes a
fixed stratified sample, the same for every model. See docs/evaluation.md, "Benchmark suites".

Results: ``OUT/eval.json`` (default ``RUN_DIR/eval`` or ``./eval``) and a table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from metareward.config import ENGINES
from metareward.engines.options import add_engine_arguments, engine_config_from_args
from metareward.evaluation.runner import (
    PARTS,
    EvalOptions,
    Evaluator,
    format_suites,
    format_table,
    parse_model_args,
    run_models,
)
from metareward.evaluation.suites import SUITES
from metareward.layout import EVAL_DIR, RunLayout, iteration_label


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate models: judge agreement, win rate (+LC), instruction following, length",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run-dir", type=Path, help="a run directory: evaluates its seed and iteration models")
    p.add_argument("--models", nargs="+", default=None,
                   help=f"models to evaluate: labels of the run (seed, {iteration_label(2)}), LABEL=PATH, or names/paths")
    p.add_argument("--parts", default=None,
                   help=f"comma-separated subset of {','.join(PARTS)} (default: all, or none with --suite)")
    p.add_argument("--suite", default=None,
                   help=f"benchmark suites, comma-separated: {','.join(SUITES)} (mtbench = the winrate part)")
    p.add_argument("--out", type=Path, help="output folder (default RUN_DIR/eval, or ./eval)")
    p.add_argument("--limit", type=int, default=8,
                   help="prompts per prompt set / suite (a fixed stratified sample); 0 = all (default 8)")
    p.add_argument("--prompts", default="mtbench", help="win-rate/length prompt set: mtbench, ifbench or a file")
    p.add_argument("--agreement-set", default="known-order",
                   help="ranked responses JSONL for judge agreement, or 'known-order' (shipped)")
    p.add_argument("--agreement-limit", type=int, default=8, help="prompts of the ranked set; 0 = all")
    p.add_argument("--judge-n", type=int, default=3, help="judgments per response (agreement)")
    p.add_argument("--judge-max-tokens", type=int, default=256, help="judgment length cap (agreement)")
    p.add_argument("--verdict-max-tokens", type=int, default=384,
                   help="pairwise judgment length cap (win rate, Arena-Hard)")
    p.add_argument("--judge-modes", default="pointwise,pairwise",
                   help="judge suites: pointwise, pairwise or both, comma-separated (default both; pairwise "
                        "prompts hold both outputs and take about twice as long)")
    p.add_argument("--scoring", choices=["free_text", "constrained"], default=None,
                   help="judge scoring for agreement (default: the run's judge.scoring, else free_text)")
    p.add_argument("--baseline", default="seed",
                   help="win-rate baseline: a model label, or reference:mtbench-gpt4 / reference:FILE")
    p.add_argument("--judge", default=None,
                   help="judge of win rates and suites: a model label or name/path (default: the win-rate "
                        "baseline model; for suites the first model). Only the official judge on openai is "
                        "not a proxy")
    p.add_argument("--judge-engine", choices=ENGINES, default=None,
                   help="engine of the judge (default: --engine's)")
    p.add_argument("--judge-base-url", default=None, help="openai judge: the server's base URL")
    p.add_argument("--judge-api-key-env", default=None,
                   help="openai judge: NAME of the environment variable holding the API key")
    p.add_argument("--verdict-mode", choices=["free_text", "constrained"], default="free_text")
    p.add_argument("--max-tokens", type=int, default=512, help="answer length cap (tokens)")
    p.add_argument("--temperature", type=float, default=0.0, help="answer sampling temperature (0 = greedy)")
    p.add_argument("--seed", type=int, default=0)
    add_engine_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metareward.config import JudgeConfig
    from metareward.errors import InputError

    known: dict[str, str] = {}
    judge = JudgeConfig()
    if args.run_dir is not None:
        models, _, judge = run_models(args.run_dir)
        known = dict(models)
    if args.models:
        models = parse_model_args(args.models, known)
    elif args.run_dir is None:
        raise InputError("give --run-dir RUN_DIR or --models MODEL [MODEL ...]")
    engine = engine_config_from_args(args, RunLayout(args.run_dir).config if args.run_dir is not None else None)
    if args.limit < 0 or args.agreement_limit < 0 or args.judge_n < 1:
        raise InputError("--limit/--agreement-limit must be >= 0 and --judge-n >= 1")
    from metareward.evaluation.suites.run import parse_suites

    suites = parse_suites(args.suite) if args.suite else ()
    if args.parts is not None:
        parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    else:
        parts = (("winrate",) if "mtbench" in suites else ()) if suites else PARTS
    if "mtbench" in suites and "winrate" not in parts:
        parts = (*parts, "winrate")
    if "mtbench" in suites and args.prompts != "mtbench":
        raise InputError("--suite mtbench runs the win rate on MT-Bench: drop --prompts or the mtbench suite")
    opts = EvalOptions(
        parts=parts,
        suites=suites,
        judge_engine=args.judge_engine,
        judge_base_url=args.judge_base_url,
        judge_api_key_env=args.judge_api_key_env,
        limit=args.limit,
        prompt_set=args.prompts,
        agreement_set=args.agreement_set,
        agreement_limit=args.agreement_limit,
        judge_n=args.judge_n,
        judge_max_tokens=args.judge_max_tokens,
        judge_modes=tuple(m.strip() for m in args.judge_modes.split(",") if m.strip()),
        verdict_max_tokens=args.verdict_max_tokens,
        scoring=args.scoring or judge.scoring,
        baseline=args.baseline,
        judge=args.judge,
        verdict_mode=args.verdict_mode,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        engine=engine,
        judge_template=judge.template,
    )
    out = args.out or (RunLayout(args.run_dir).eval_dir if args.run_dir is not None else Path(EVAL_DIR))
    from metareward.runlock import run_lock, writes_into_run

    with run_lock(args.run_dir, command="eval") if writes_into_run(args.run_dir, out) else contextlib.nullcontext():
        report = Evaluator(models, opts, out).run()  # writing into a run directory: its one writer (runlock)
    print(format_table(report))
    if report.get("suites"):
        print("\n" + format_suites(report))
    print(f"\nwritten: {out / 'eval.json'}")
    return 0
