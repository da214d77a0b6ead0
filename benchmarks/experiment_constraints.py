"""Per-constraint held-out accuracy of an experiment's models, from the answers it already stored.

    python benchmarks/experiment_constraints.py configs/experiment.yaml benchmarks/results/experiment-control.json

``metareward experiment`` writes ``per_constraint`` for every model it evaluates (how many held-out
prompts carrying each constraint kind the greedy answer satisfies, strict). This adds it to a results JSON
written before that field existed, reading the answers from the experiment root's evaluation folders: no
model is loaded (an answer missing from the logs is an error, not a new generation), and the JSON's other
fields (wall time, CPU time) stay as measured. Prints the table docs/experiment.md shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from metareward.experiment import heldout as ho
from metareward.experiment.settings import load_experiment
from metareward.files import atomic_write_text
from metareward.layout import RunLayout, iteration_label
from metareward.pool import load_prompt_pool
from metareward.verifiable.constraints import load_constraints


def no_engine():
    raise SystemExit("an answer is missing from the stored logs: run `metareward experiment` first")


def stored_answers(root: Path, label: str, heldout: ho.HeldOut, max_tokens: int) -> dict[str, str]:
    folder = RunLayout(root).eval_dir / label / "answers"
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no stored answers")
    return ho.answer(heldout, ho.passes(no_engine, folder, f"{label} answers"), max_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("results")
    args = ap.parse_args()
    exp = load_experiment(args.config)
    prompts = load_prompt_pool(exp.heldout)
    heldout = ho.HeldOut(prompts[: exp.heldout_limit] if exp.heldout_limit else prompts, load_constraints(exp.heldout))
    results = json.loads(Path(args.results).read_text())
    rows = {"seed model": results["seed_model"]}
    for name, arm in results["arms"].items():
        rows.update({f"{name} iter {it['iteration']}": it for it in arm.get("iterations", [])})
    for row, entry in rows.items():
        label = "seed" if row == "seed model" else f"{row.rsplit(' iter ', 1)[0]}-{iteration_label(entry['iteration'])}"
        entry["per_constraint"] = ho.per_constraint(heldout, stored_answers(Path(exp.root), label, heldout,
                                                                            exp.answer_max_tokens))
    atomic_write_text(Path(args.results), json.dumps(results, indent=2) + "\n")
    kinds = sorted({k for e in rows.values() for k in e["per_constraint"]})
    print("| constraint (held-out prompts) | " + " | ".join(rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for kind in kinds:
        cells = [e["per_constraint"].get(kind, {"satisfied": 0, "prompts": 0}) for e in rows.values()]
        print(f"| `{kind}` ({cells[0]['prompts']}) | " + " | ".join(str(c["satisfied"]) for c in cells) + " |")


if __name__ == "__main__":
    main()
