"""Recompute an iteration's DPO pairs from its stored judgments at other settings, with no model loaded.

Every combination of the given rho values and chosen-length limits is run through the loop's own pair
selection; each prints the actor and judge pair counts, the chosen and rejected mean lengths (characters)
and their gap, and the prompts skipped by reason. Options left out keep the run's own values, and the
run's own setting says whether it reproduces the stored pair files. --write stores one setting's pairs
for training (the iteration must not have trained yet); `metareward run` then trains on them, given a
config with the same values (the run directory's config.yaml is updated to them).

Example: metareward pairs runs/tiny --iteration 2 --rho 0,0.1,0.2,0.32,0.4
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

from metareward.errors import InputError
from metareward.layout import CONFIG_FILE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pairs", help="what-if: the pairs other rho / length limits give, from stored judgments",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help=f"a run directory (holds {CONFIG_FILE} and the iteration folders)")
    p.add_argument("--iteration", type=int, required=True, help="which iteration (1-based)")
    p.add_argument("--rho", help="comma-separated rho values, e.g. 0,0.1,0.2,0.32,0.4 (default: the run's)")
    p.add_argument("--actor-max-chosen-length", metavar="CHARS",
                   help="comma-separated limits on the chosen response's length; 'none' for no limit")
    p.add_argument("--judge-max-chosen-length", metavar="CHARS",
                   help="comma-separated limits on the chosen judgment's length; 'none' for no limit")
    p.add_argument("--write", action="store_true",
                   help="store the pairs of the one setting given as the iteration's training pairs")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def _values(text: str | None, option: str, parse: Any, default: Any) -> list[Any]:
    if text is None:
        return [default]
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            out.append(parse(part))
        except InputError:
            raise
        except ValueError:
            raise InputError(f"{option}: cannot read {part!r} (expected a comma-separated list)") from None
    return out


def _rho(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 0.5:
        raise InputError(f"--rho: {value:g} is outside [0, 0.5] (above 0.5 the tiers overlap)")
    return value


def _limit(text: str) -> int | None:
    if text.lower() in ("none", "null", "-"):
        return None
    value = int(text)
    if value <= 0:
        raise InputError(f"length limits must be > 0 or 'none', got {value}")
    return value


def _describe(kind: str, row: dict[str, Any]) -> str:
    r = row[kind]
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(r["skipped"].items())) or "none"
    if not r["pairs"]:
        return f"  {kind}: 0 pairs; skipped: {skipped}"
    return (f"  {kind}: {r['pairs']} pairs; chosen {r['chosen_mean_chars']:.1f} chars, rejected "
            f"{r['rejected_mean_chars']:.1f}, gap {r['gap_chars']:+.1f}; skipped: {skipped}")


def run(args: argparse.Namespace) -> int:
    from metareward.layout import RunLayout
    from metareward.runlock import run_lock
    from metareward.whatif import PairSetting, open_iteration, pairs_for, stored_pairs, summarize, write_pairs

    it = open_iteration(args.run_dir, args.iteration)
    own = PairSetting.of(it.plan)
    settings = [PairSetting(*combo) for combo in itertools.product(
        _values(args.rho, "--rho", _rho, own.rho),
        _values(args.actor_max_chosen_length, "--actor-max-chosen-length", _limit, own.actor_max_chosen_length),
        _values(args.judge_max_chosen_length, "--judge-max-chosen-length", _limit, own.judge_max_chosen_length),
    )]
    if args.write:
        if len(settings) != 1:
            raise InputError(f"--write: give one setting (one value per option), got {len(settings)} combinations")
        layout = RunLayout(args.run_dir)
        with run_lock(layout, "pairs --write"):
            it = open_iteration(args.run_dir, args.iteration)  # re-read under the lock
            result = write_pairs(it, settings[0], layout.config)
        print(json.dumps(result) if args.json else
              f"wrote {result['pairs_written']} pairs of iteration {args.iteration} at {settings[0].label()}; "
              f"{layout.config} now holds these settings: resume with `metareward run {layout.config}` "
              f"(a config elsewhere needs iterations[{args.iteration - 1}] set to the same values)")
        return 0
    stored = stored_pairs(it)
    rows = [summarize(s, pairs_for(it, s), stored if s == own else None) for s in settings]
    if args.json:
        print(json.dumps({"run_dir": args.run_dir, "iteration": args.iteration, "own": own.label(), "settings": rows},
                         indent=2))
        return 0
    print(f"iteration {args.iteration} of {args.run_dir}; the run's own setting: {own.label()}")
    for s, row in zip(settings, rows, strict=True):
        mark = ""
        if "same_as_stored" in row:
            mark = "  (the run's own: same as the stored pairs)" if row["same_as_stored"] else \
                "  (the run's own: DIFFERS from the stored pairs)"
        print(s.label() + mark)
        print(_describe("actor", row))
        if it.train_judge:
            print(_describe("judge", row))
    return 0
