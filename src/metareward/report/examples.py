"""Examples: one prompt of one iteration followed from its responses to the pairs that trained the next model.

For each sampled prompt the page shows:

* the prompt, its K responses (folded) with their N judgments (folded), each judgment's score and each
  response's mean valid score (its reward, as ``stages.pairs`` computes it);
* the ρ quality tiers (``selection.length_control.tier_bounds``) and which responses are in them, and
  the actor pair of ``actor_pairs.jsonl`` -- or, when there is none, the reason, recomputed with
  ``select_actor_pair`` and the run's seeded tie-break;
* for the meta-judged response: its judgments, every meta-judgment (which judgment was A, which B, the
  verdict), the battle matrix (``selection.elo.battle_matrix`` with the iteration's positional weights),
  the Elo (Bradley-Terry, ``evidence_l2`` penalty) scores, and the judge pair of ``judge_pairs.jsonl`` or
  the reason there is none, recomputed as ``stages.pairs.build_judge_pairs`` does (``select_judge_pair``
  on the stated scores, its skip reasons refined by the same helpers; battles involving a judgment
  without a valid score are left out, as there).

The sample is fixed: ``n`` prompt ids drawn with ``random.Random(EXAMPLE_SEED + iteration)`` from the
iteration's sorted prompt ids (``n = None``: every prompt), plus any ids asked for by name. Settings
(ρ, length limits, Bradley-Terry L2, run seed) come from the run's resolved ``config.yaml``; a missing
field takes the config default. Assumption: the records were built with that config (the loop refuses
to reuse a stage whose settings changed, so a finished run's files agree with it).
"""

from __future__ import annotations

import html
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from metareward.config import IterationConfig, MetaJudgeConfig
from metareward.errors import InputError
from metareward.layout import CONFIG_FILE, MODEL_DIR, IterationLayout, RunLayout, iteration_label
from metareward.records import Judgment, MetaJudgment, PreferencePair, Prompt, Response, read_jsonl
from metareward.report.html import fmt, folded, table
from metareward.selection.elo import battle_matrix, bradley_terry, evidence_l2, positional_weights
from metareward.selection.judge_pairs import SKIP_ELO_TIED, select_judge_pair
from metareward.selection.length_control import TOL, ScoredResponse, Skip, select_actor_pair, tier_bounds
from metareward.stages.common import request_seed
from metareward.stages.pairs import pre_meta_skip_reason, stated_score, tied_reason, valid_score

EXAMPLE_SEED = 0
DEFAULT_EXAMPLES = 8
"""Prompts shown per iteration unless ``--examples N`` says otherwise."""


@dataclass
class RunSettings:
    """What the examples need from ``config.yaml``."""

    seed: int = 0
    mode: str = "meta-rewarding"
    model: str = ""
    iterations: list[IterationConfig] = field(default_factory=list)
    meta_judge: MetaJudgeConfig = field(default_factory=MetaJudgeConfig)

    def iteration(self, i: int) -> IterationConfig:
        return self.iterations[i - 1] if 1 <= i <= len(self.iterations) else IterationConfig()


def run_settings(run_dir: Path) -> RunSettings:
    """The run's settings from ``RUN_DIR/config.yaml`` (defaults when absent); a malformed file is an error."""
    path = RunLayout(run_dir).config
    if not path.is_file():
        return RunSettings()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping")

    def build(cls, raw: Any, where: str):
        raw = raw or {}
        if not isinstance(raw, dict):
            raise InputError(f"{path}: {where}: expected a mapping")
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in names})

    iters = data.get("iterations") or []
    if not isinstance(iters, list):
        raise InputError(f"{path}: iterations: expected a list")
    return RunSettings(
        seed=int(data.get("seed", 0)),
        mode=str(data.get("mode", "meta-rewarding")),
        model=str(data.get("model", "")),
        iterations=[build(IterationConfig, it, f"iterations[{k}]") for k, it in enumerate(iters)],
        meta_judge=build(MetaJudgeConfig, data.get("meta_judge"), "meta_judge"),
    )


def sample_ids(ids: Iterable[str], n: int | None, iteration: int, wanted: Sequence[str] = ()) -> list[str]:
    """The fixed sample of prompt ids (see module docstring), in id order, plus ``wanted`` ids present."""
    ids = sorted(set(ids))
    if n is None or n >= len(ids):
        picked = set(ids)
    else:
        picked = set(random.Random(EXAMPLE_SEED + iteration).sample(ids, max(n, 0)))
    picked |= {x for x in wanted if x in ids}
    return [x for x in ids if x in picked]


@dataclass
class IterationRecords:
    """One iteration's records, indexed for the examples."""

    iteration: int
    prompts: dict[str, Prompt]
    responses: dict[str, list[Response]]  # by prompt id, in sample order
    judgments: dict[str, list[Judgment]]  # by response id, in index order
    metas: list[MetaJudgment]
    metas_by_prompt: dict[str, list[MetaJudgment]]
    actor_pairs: dict[str, PreferencePair]  # by prompt id
    judge_pairs: dict[str, PreferencePair]
    has_meta: bool
    has_pairs: bool  # the pairs stage wrote its files

    @classmethod
    def load(cls, iteration: int, folder: Path) -> IterationRecords:
        layout = IterationLayout(folder, iteration)

        def read(name: str, kind: type) -> list:
            p = layout.artifact(name)
            return read_jsonl(p, kind) if p.is_file() else []

        responses: dict[str, list[Response]] = defaultdict(list)
        for r in read("responses", Response):
            responses[r.prompt_id].append(r)
        judgments: dict[str, list[Judgment]] = defaultdict(list)
        for j in read("judgments", Judgment):
            judgments[j.response_id].append(j)
        for js in judgments.values():
            js.sort(key=lambda j: j.index)
        valid = {j.id for js in judgments.values() for j in js if valid_score(j)}
        metas = [m for m in read("meta_judgments", MetaJudgment) if m.judgment_a in valid and m.judgment_b in valid]
        metas_by_prompt: dict[str, list[MetaJudgment]] = defaultdict(list)
        for m in metas:
            metas_by_prompt[m.prompt_id].append(m)
        return cls(
            iteration=iteration,
            prompts={p.id: p for p in read("prompts", Prompt)},
            responses={k: sorted(v, key=lambda r: r.index) for k, v in responses.items()},
            judgments=dict(judgments),
            metas=metas,
            metas_by_prompt=dict(metas_by_prompt),
            actor_pairs={p.prompt_id: p for p in read("actor_pairs", PreferencePair)},
            judge_pairs={p.prompt_id: p for p in read("judge_pairs", PreferencePair)},
            has_meta=layout.artifact("meta_judgments").is_file(),
            has_pairs=layout.artifact("actor_pairs").is_file(),
        )


def _mean_score(js: Sequence[Judgment]) -> float | None:
    valid = [j.score for j in js if j.score is not None]
    return float(np.mean(valid)) if valid else None


def _tag(text: str, cls: str) -> str:
    return f'<span class="tag {cls}">{html.escape(text)}</span>'


def _score(s: float | None) -> str:
    return "invalid" if s is None else f"{s:.3g}"


def actor_section(rec: IterationRecords, pid: str, cfg: RunSettings) -> str:
    it = cfg.iteration(rec.iteration)
    rs = rec.responses.get(pid, [])
    means = {r.id: _mean_score(rec.judgments.get(r.id, [])) for r in rs}
    scored = [ScoredResponse(r.id, means[r.id], len(r.text)) for r in rs if means[r.id] is not None]
    pair = rec.actor_pairs.get(pid)
    top_low = bottom_high = None
    parts = []
    if len(scored) >= 2:
        s_max, s_min = max(x.score for x in scored), min(x.score for x in scored)
        top_low, bottom_high = tier_bounds(s_max, s_min, it.rho)
        parts.append(f'<p class="note">Mean valid scores: S_max {s_max:.3g}, S_min {s_min:.3g}; ρ = {it.rho:g}: '
                     f"top tier = score ≥ {top_low:.3g} (chosen: its shortest), bottom tier = score ≤ "
                     f"{bottom_high:.3g} (rejected: its longest); docs/method.md §2.4.</p>")
    rows = []
    for r in rs:
        m = means[r.id]
        tags = []
        if m is not None and top_low is not None and m >= top_low - TOL:
            tags.append(_tag("top tier", "tier"))
        if m is not None and bottom_high is not None and m <= bottom_high + TOL:
            tags.append(_tag("bottom tier", "tier"))
        if pair and pair.chosen_id == r.id:
            tags.append(_tag("chosen", "chosen"))
        if pair and pair.rejected_id == r.id:
            tags.append(_tag("rejected", "rejected"))
        if any(m.response_id == r.id for m in rec.metas_by_prompt.get(pid, [])):
            tags.append(_tag("meta-judged", "meta"))
        js = rec.judgments.get(r.id, [])
        rows.append([html.escape(r.id), fmt(len(r.text), "int"), " ".join(_score(j.score) for j in js) or "–",
                     fmt(m), "".join(tags) or "–"])
    parts.append(table("responses", ["response", "length", "judgment scores", "mean", "role"], rows))
    for r in rs:
        js = rec.judgments.get(r.id, [])
        inner = folded(r.text, "response text") + "".join(
            folded(j.text, f"judgment j{j.index} — score {_score(j.score)}") for j in js)
        parts.append(f'<details class="fold"><summary>{html.escape(r.id)}: response and its {len(js)} '
                     f"judgment(s)</summary>{inner}</details>")
    if pair is not None:
        parts.append(f'<p>Actor pair: {_tag("chosen", "chosen")} <code>{html.escape(pair.chosen_id)}</code> '
                     f"(score {fmt(pair.chosen_score)}, {len(pair.chosen)} chars) over "
                     f'{_tag("rejected", "rejected")} <code>{html.escape(pair.rejected_id)}</code> '
                     f"(score {fmt(pair.rejected_score)}, {len(pair.rejected)} chars).</p>")
    else:
        rng = random.Random(request_seed(cfg.seed, rec.iteration, "actor_pair", pid))
        choice = select_actor_pair(scored, it.rho, rng, it.actor_max_chosen_length)
        parts.append(f"<p>No actor pair: <b>{html.escape(_why(choice, rec.has_pairs))}</b>.</p>")
    return "".join(parts)


def _why(choice: Any, pairs_written: bool) -> str:
    """Why a prompt has no pair: the recomputed skip reason, or what else explains it."""
    if isinstance(choice, Skip):
        return choice.reason
    if not pairs_written:
        return "the pairs stage has not run yet"
    return ("not in the pairs file, although recomputing the selection gives one: the records do not match "
            f"this run's {CONFIG_FILE}")


def _no_meta_reason(rec: IterationRecords, pid: str, cfg: RunSettings) -> str:
    if cfg.mode == "self-rewarding":
        return "self-rewarding run: no meta-judge, no judge pairs"
    if not rec.has_meta:
        return "this iteration did not run the meta-judge (train_judge: false, or not run yet)"
    js = [j for r in rec.responses.get(pid, []) for j in rec.judgments.get(r.id, [])]
    return (f"no response was meta-judged: {pre_meta_skip_reason(pid, js, cfg.seed, rec.iteration)} "
            "(docs/method.md §3.1)")


def meta_section(rec: IterationRecords, pid: str, cfg: RunSettings, weights: tuple[float, float]) -> str:
    metas = rec.metas_by_prompt.get(pid, [])
    if not metas:
        return f"<p>Judge pair: none — {html.escape(_no_meta_reason(rec, pid, cfg))}.</p>"
    rid = metas[0].response_id
    by_id = {j.id: j for j in rec.judgments.get(rid, [])}
    ids = sorted({m.judgment_a for m in metas} | {m.judgment_b for m in metas}, key=lambda i: by_id[i].index)
    index = {jid: k for k, jid in enumerate(ids)}
    w1, w2 = weights
    B = battle_matrix(len(ids), ((index[m.judgment_a], index[m.judgment_b], m.result) for m in metas), w1, w2)
    l2 = cfg.meta_judge.bt_l2
    elo = bradley_terry(B, l2=evidence_l2(B, l2))  # bt_l2 is per unit of evidence (docs/judging.md)
    js = [by_id[i] for i in ids]
    names = [f"j{j.index} ({_score(j.score)})" for j in js]
    valid = [j.score for j in rec.judgments.get(rid, []) if j.score is not None]
    parts = [f'<p>Meta-judged response <code>{html.escape(rid)}</code>: the highest variance of valid scores '
             f"({float(np.var(valid)):.3g}) among the prompt's responses. {len(metas)} meta-judgments of "
             f"{len(ids)} distinct judgments, both orders; positional weights of the iteration ω1 = {w1:.3g} "
             f"(a first-position win), ω2 = {w2:.3g} (a second-position win).</p>"]
    rows = [[html.escape(names[m])] + [("·" if m == n else f"{B[m, n]:.2f}") for n in range(len(ids))]
            + [f"{elo[m]:+.3f}"] for m in range(len(ids))]
    parts.append(table("battle-matrix", ["B[row beat column]", *names, "Elo ε"], rows, cls="matrix"))
    pair = rec.judge_pairs.get(pid)
    if pair is not None:
        parts.append(f'<p>Judge pair: {_tag("chosen", "chosen")} <code>{html.escape(pair.chosen_id)}</code> '
                     f"(score {fmt(pair.chosen_score)}, ε max) over {_tag('rejected', 'rejected')} "
                     f"<code>{html.escape(pair.rejected_id)}</code> (score {fmt(pair.rejected_score)}, ε min).</p>")
        top = {ids[k] for k in range(len(ids)) if elo[k] >= elo.max() - TOL}
        if pair.chosen_id not in top:
            parts.append('<p class="alarm">The recomputed ε ranks '
                         f"{', '.join(sorted(html.escape(t) for t in top))} first, not the recorded chosen judgment: "
                         f"the records do not match this run's {CONFIG_FILE}.</p>")
    else:
        it = cfg.iteration(rec.iteration)
        rng = random.Random(request_seed(cfg.seed, rec.iteration, "judge_pair", rid))
        choice = select_judge_pair([stated_score(j) for j in js], [len(j.text) for j in js], B, rng,  # type: ignore[misc]
                                   it.judge_max_chosen_length, cfg.meta_judge.require_different_scores, l2)
        if isinstance(choice, Skip) and choice.reason == SKIP_ELO_TIED:
            choice = Skip(tied_reason(metas))
        parts.append(f"<p>No judge pair: <b>{html.escape(_why(choice, rec.has_pairs))}</b> (docs/method.md §3.6).</p>")
    verdicts = "".join(
        folded(m.text, f"A = j{by_id[m.judgment_a].index}, B = j{by_id[m.judgment_b].index}: "
                       f"verdict {m.verdict or 'none'}") for m in metas)
    parts.append(f'<details class="fold"><summary>the {len(metas)} meta-judgments</summary>{verdicts}</details>')
    return "".join(parts)


def example(rec: IterationRecords, pid: str, cfg: RunSettings, weights: tuple[float, float], run_label: str) -> str:
    prompt = rec.prompts.get(pid)
    text = prompt.text if prompt else ""
    actor = rec.actor_pairs.get(pid)
    judge = rec.judge_pairs.get(pid)
    preview = html.escape(text.strip().splitlines()[0][:90] if text.strip() else "")
    badges = (_tag("actor pair", "chosen") if actor else _tag("no actor pair", "tier")) + (
        _tag("judge pair", "meta") if judge else "")
    return (
        f'<details class="example" data-example data-prompt="{html.escape(pid)}" '
        f'data-iteration="{rec.iteration}" data-run="{html.escape(run_label)}">'
        f"<summary>iter {rec.iteration} · <code>{html.escape(pid)}</code> · {preview} {badges}</summary>"
        f"{folded(text, 'prompt')}<h4>Responses, judgments and the actor pair</h4>"
        f"{actor_section(rec, pid, cfg)}<h4>Meta-judge and the judge pair</h4>"
        f"{meta_section(rec, pid, cfg, weights)}"
        f'<p class="note">These pairs trained <code>{iteration_label(rec.iteration)}/{MODEL_DIR}</code>, the model of iteration '
        f"{rec.iteration + 1}.</p></details>"
    )


def examples_section(run_dir: Path, iterations: Sequence[tuple[int, Path]], n: int | None,
                     wanted: Sequence[str] = (), run_label: str = "") -> str:
    """The examples of every iteration (``n`` per iteration, None = all; ``wanted`` ids always)."""
    cfg = run_settings(run_dir)
    blocks = []
    total = 0
    for i, folder in iterations:
        if i < 1:
            continue
        rec = IterationRecords.load(i, folder)
        weights = positional_weights(m.result for m in rec.metas)
        ids = sample_ids(rec.prompts, n, i, wanted)
        total += len(ids)
        blocks.append(f"<h3>Iteration {i}: {len(ids)} of {len(rec.prompts)} prompts</h3>")
        blocks.extend(example(rec, pid, cfg, weights, run_label) for pid in ids)
    sample = "every prompt" if n is None else f"a fixed sample of up to {n} prompts per iteration (seed {EXAMPLE_SEED})"
    return (
        '<div id="examples"><p class="note">Each example follows one prompt from its responses to the pairs that '
        f"trained the next model; {sample}; <code>metareward report --examples N</code> (or <code>all</code>) and "
        "<code>--prompt ID</code> choose others. Scores: 0-5, invalid = no parseable score. Lengths in characters.</p>"
        '<p><input id="search" type="search" placeholder="search prompt id" oninput="mrFilter(this.value)"> '
        f'<span id="search-count" class="note">{total} shown</span> '
        '<button type="button" onclick="mrExpand(true)">expand all</button> '
        '<button type="button" onclick="mrExpand(false)">collapse all</button></p>'
        + "".join(blocks) + "</div>"
    )
