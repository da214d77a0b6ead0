"""``metareward eft build|sft``: judge fine-tuning data from human rankings, and SFT on it (docs/method.md §1.1, §4.2).

* ``build RANKED.jsonl --out DIR``: the seed model writes N judgments per response with the training judge
  prompt, through any engine (``--engine hf|vllm|openai``, as ``metareward eval``); prompts whose mean-score order agrees with the human order are kept; the most common score is
  down-sampled; prompts are split train/eval. Writes DIR/train.jsonl, eval.jsonl, judgments.jsonl,
  report.json. Resumable: rerun the same command after a kill.
* ``sft --data DIR/train.jsonl --out MODEL_DIR``: supervised fine-tuning on it (loss on the judgment only).

Input schema (one line per prompt; rank 0 = best)::

  {"id": "oa-1", "prompt": "...", "responses": [{"text": "...", "rank": 0}, {"text": "...", "rank": 1}]}
"""

from __future__ import annotations

import argparse
import json

from metareward.engines.options import add_engine_arguments, engine_config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eft", help="build EFT judge data from ranked responses; SFT on it", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ps = p.add_subparsers(dest="eft_command", required=True)

    b = ps.add_parser("build", help="build EFT train/eval JSONL from a ranked JSONL")
    b.add_argument("input", help="ranked JSONL (see `metareward eft --help`)")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--model", default="smollm2-135m", help="seed model: embedded name, local folder or HF id")
    b.add_argument("--n", type=int, default=3, help="judgments per response")
    b.add_argument("--scoring", choices=["free_text", "constrained"], default="free_text")
    b.add_argument("--temperature", type=float, default=0.8)
    b.add_argument("--top-p", type=float, default=0.95)
    b.add_argument("--max-tokens", type=int, default=512)
    b.add_argument("--template", help="custom judge prompt file (default: the paper's)")
    b.add_argument("--per-response", choices=["closest", "all"], default="closest",
                   help="judgments kept per response of an agreeing prompt")
    b.add_argument("--downsample-ratio", type=float, default=1.0,
                   help="most common score <= ratio x second most common; 0 turns it off")
    b.add_argument("--eval-fraction", type=float, default=0.25)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--chunk-size", type=int, default=64, help="sequences per resumable chunk (a request of n samples counts n)")
    add_engine_arguments(b)
    b.set_defaults(func=run_build)

    s = ps.add_parser("sft", help="supervised fine-tuning on EFT data (loss on the judgment only)")
    s.add_argument("--data", required=True, help="train JSONL ({prompt, completion} per line)")
    s.add_argument("--eval-data", help="eval JSONL (eval loss reported)")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--out", required=True, help="output model folder")
    s.add_argument("--learning-rate", type=float, default=1e-6)
    s.add_argument("--min-learning-rate", type=float, default=1e-7)
    s.add_argument("--epochs", type=float, default=2.0)
    s.add_argument("--max-steps", type=int, default=-1)
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--gradient-accumulation", type=int, default=4)
    s.add_argument("--max-length", type=int, default=2048)
    s.add_argument("--method", choices=["full", "lora"], default="full")
    s.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=0)
    s.set_defaults(func=run_sft_command)


def run_build(args: argparse.Namespace) -> int:
    from metareward.eft import EFTSettings, build_eft
    from metareward.engines import make_engine
    from metareward.models import check_model_name, resolve_model

    s = EFTSettings(
        n=args.n, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, scoring=args.scoring,
        template=args.template, per_response=args.per_response,
        downsample_ratio=args.downsample_ratio if args.downsample_ratio > 0 else None,
        eval_fraction=args.eval_fraction, seed=args.seed, chunk_size=args.chunk_size,
    )
    s.validate()
    check_model_name(args.model, "--model")
    engine_cfg = engine_config_from_args(args)

    def engine():
        return make_engine(engine_cfg, resolve_model(args.model), log_dir=args.out)

    report = build_eft(args.input, args.out, engine, s)
    print(json.dumps(report, indent=2))
    print(f"{report['prompts_agreeing']} of {report['prompts']} prompts agree with the human order "
          f"({report['prompts_disagreeing']} disagree, {report['prompts_unscored']} unscored); "
          f"{report['train']} train / {report['eval']} eval examples in {args.out}")
    return 0


def run_sft_command(args: argparse.Namespace) -> int:
    from metareward.models import check_model_name, resolve_model
    from metareward.training.sft import SFTConfig, run_sft

    cfg = SFTConfig(
        data=args.data, eval_data=args.eval_data, learning_rate=args.learning_rate,
        min_learning_rate=args.min_learning_rate, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, gradient_accumulation=args.gradient_accumulation, max_length=args.max_length,
        method=args.method, precision=args.precision, seed=args.seed,
    )
    cfg.validate(prefix="")
    check_model_name(args.model, "--model")
    metrics = run_sft(resolve_model(args.model), cfg.data, args.out, cfg, threads=args.threads)
    print(json.dumps(metrics, indent=2))
    return 0
