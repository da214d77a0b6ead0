"""The experiment's results JSON as a Markdown table (what ``metareward experiment`` prints and
docs/experiment.md shows): one row per model, accuracies in percent, differences from the seed model in
points with their bootstrap 95% interval."""

from __future__ import annotations

from typing import Any

HEADER = ("| model | prompt strict | Δ vs seed [95% CI] | prompt loose | instr. strict | instr. loose "
          "| mean length (chars) | own judge vs verifier | actor pairs | IFEval prompt strict |")


def _diff(row: dict[str, Any], metric: str = "prompt_strict") -> str:
    d = row.get("vs_seed", {}).get(metric)
    if not d:
        return "–"
    low, high = d["ci95"]
    return f"{d['diff']:+.1f} [{low:+.1f}, {high:+.1f}]"


def _judge(row: dict[str, Any]) -> str:
    j = row.get("judge_vs_verifier") or {}
    if j.get("accuracy") is None:
        return "–"
    return f"{j['accuracy']:.1f}% ({j['ties']} ties / {j['pairs']})"


def _row(label: str, row: dict[str, Any], pairs: str = "–") -> str:
    ife = row.get("ifeval")
    ife_text = f"{100 * ife['prompt_strict']:.1f}" if ife else "–"
    return (f"| {label} | {row['prompt_strict']:.1f} | {_diff(row)} | {row['prompt_loose']:.1f} "
            f"| {row['instruction_strict']:.1f} | {row['instruction_loose']:.1f} | {row['mean_length_chars']:.0f} "
            f"| {_judge(row)} | {pairs} | {ife_text} |")


def format_table(results: dict[str, Any]) -> str:
    """One line per model: the seed model, then each arm's iterations."""
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    if "seed_model" in results:
        lines.append(_row("seed model", results["seed_model"]))
    for name, arm in results.get("arms", {}).items():
        for it in arm.get("iterations", []):
            pairs = it.get("summary", {}).get("actor_pairs")
            lines.append(_row(f"{name} iter {it['iteration']}", it, "–" if pairs is None else str(pairs)))
    return "\n".join(lines)
