"""``metareward prompts import|generate``: build the prompt pool a run draws from (docs/method.md §1.2).

* ``import SOURCE --out POOL.jsonl``: from JSONL, CSV/TSV, a local Hugging Face dataset (parquet/arrow file,
  ``save_to_disk`` folder) or a hub id (online), with a chosen column, dedup and length filters.
* ``generate --out POOL.jsonl --n N``: the Self-Instruct recipe (8-shot: 6 seed + 2 generated prompts,
  T 0.6, top-p 0.9) through any engine (``--engine hf|vllm|openai``, as ``metareward eval``), then Self-Instruct's filters (ROUGE-L > 0.7 against
  the pool, banned keywords, 3-150 words). Resumable: rerun the same command after a kill.

Both print a JSON report (kept / dropped per filter) and write it to ``POOL.jsonl.report.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from metareward.engines.options import add_engine_arguments, engine_config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prompts", help="build a prompt pool: import or self-instruct generate", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ps = p.add_subparsers(dest="prompts_command", required=True)

    imp = ps.add_parser("import", help="import prompts from JSONL, CSV or a Hugging Face dataset")
    imp.add_argument("source", help="file (.jsonl .json .csv .tsv .parquet .arrow), dataset folder, or hub id")
    imp.add_argument("--out", required=True, help="pool JSONL to write")
    imp.add_argument("--column", help="prompt column (default: first of prompt, text, instruction)")
    imp.add_argument("--id-column", help="column holding prompt ids (default: p000001, p000002, ...)")
    imp.add_argument("--split", default="train", help="dataset split (datasets only; default train)")
    imp.add_argument("--min-words", type=int, default=1)
    imp.add_argument("--max-words", type=int, default=1000)
    imp.add_argument("--min-chars", type=int, default=1)
    imp.add_argument("--max-chars", type=int, default=20000)
    imp.add_argument("--no-dedup", action="store_true", help="keep exact duplicates")
    imp.add_argument("--limit", type=int, help="stop after this many kept prompts")
    imp.set_defaults(func=run_import)

    gen = ps.add_parser("generate", help="generate prompts with the 8-shot Self-Instruct recipe")
    gen.add_argument("--out", required=True, help="pool JSONL to write (its log and report sit beside it)")
    gen.add_argument("--n", type=int, default=1000, help="prompts to keep (the paper: 20000)")
    gen.add_argument("--seeds", help="seed prompts (a pool file); default: the 290 shipped seeds")
    gen.add_argument("--model", default="smollm2-135m", help="embedded name, local folder or HF id")
    gen.add_argument("--include-seeds", action="store_true", help="write the seeds into the pool too")
    gen.add_argument("--temperature", type=float, default=0.6)
    gen.add_argument("--top-p", type=float, default=0.9)
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--requests-per-round", type=int, default=32)
    gen.add_argument("--max-rounds", type=int)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--min-words", type=int, default=3)
    gen.add_argument("--max-words", type=int, default=150)
    gen.add_argument("--rouge-threshold", type=float, default=0.7)
    gen.add_argument("--no-keyword-filter", action="store_true")
    add_engine_arguments(gen)
    gen.set_defaults(func=run_generate)


def _print(report: dict) -> None:
    print(json.dumps(report, indent=2))


def run_import(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from metareward.prompt_pool import ImportSettings, import_prompts

    s = ImportSettings(column=args.column, id_column=args.id_column, split=args.split, min_words=args.min_words,
                       max_words=args.max_words, min_chars=args.min_chars, max_chars=args.max_chars,
                       dedup=not args.no_dedup, limit=args.limit)
    report = import_prompts(args.source, args.out, s)
    _print(asdict(report))
    print(f"kept {report.kept} of {report.rows} rows -> {args.out}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from metareward.engines import make_engine
    from metareward.models import check_model_name, resolve_model
    from metareward.pool import load_prompt_pool
    from metareward.prompt_pool import SelfInstructSettings, generate_pool

    s = SelfInstructSettings(
        n_prompts=args.n, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
        requests_per_round=args.requests_per_round, max_rounds=args.max_rounds, seed=args.seed,
        min_words=args.min_words, max_words=args.max_words, rouge_threshold=args.rouge_threshold,
        keywords=not args.no_keyword_filter,
    )
    s.validate()
    seeds = load_prompt_pool(args.seeds) if args.seeds else None
    check_model_name(args.model, "--model")
    engine_cfg = engine_config_from_args(args)

    def engine():
        return make_engine(engine_cfg, resolve_model(args.model), log_dir=Path(args.out).parent)

    report = generate_pool(args.out, engine, s, seeds=seeds, include_seeds=args.include_seeds)
    _print(report)
    d = report["dropped"]
    print(f"generated {report['generated']}, kept {report['kept']}, dropped "
          + ", ".join(f"{k} {v}" for k, v in d.items())
          + f"; wrote {report['written']} prompts to {args.out}"
          + ("" if report["complete"] else f" (INCOMPLETE: target {report['target']}, raise --max-rounds)"))
    return 0
