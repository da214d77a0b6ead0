"""The work of each stage of each iteration: requests, samples, records, prompt and generated tokens.

Counted the way the loop's stages count them (``loop.STAGES``; a manifest entry's ``count`` is what the
stage writes), from the config, the prompt pool and whatever a run directory already holds:

* ``prompts``: the iteration's prompts, drawn as ``loop.Runner.run`` draws them (the pool shuffled
  once with the run seed, consecutive slices): exact.
* ``actor``: one request per prompt, K samples each: exact. Its records (responses after exact
  duplicates are removed) are at most K per prompt: a bound until the stage has run.
* ``judge``: one request per response, N samples, N judgments each: exact once the responses exist,
  else a bound (every response unique).
* ``meta_judge``: both orders of every pair of distinct valid judgments of each prompt's max-variance
  response: at most N(N-1) battles per prompt; exact once the judgments exist (the stage's own
  ``plan_battles``, no model).
* ``pairs``: at most one actor pair and one judge pair per prompt; exact once the judgments and
  meta-judgments exist (the loop's own pair builders).
* ``train``: the pairs, one DPO example each; ``train_tokens`` are the tokens of both sequences of every
  pair (prompt + chosen, prompt + rejected, each cut at ``training.max_length``), per epoch.

Each stage's count is derived from its *inputs* on disk, never from its own output, so a plan made
after a stage's inputs exist predicts its manifest count exactly (``tests/test_plan.py``).
Generated tokens are bounded by ``max_tokens``; ``expected`` replaces every bound by the lengths and
ratios measured in the latest finished earlier iteration of the same run (``Measured``) when there is one,
else keeps the bounds except for the judge pairs' yield (``PRIOR_JUDGE_PAIRS_PER_PROMPT``, an assumption).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from metareward.config import RunConfig
from metareward.layout import IterationLayout, RunLayout
from metareward.plan.shape import TokenCounter
from metareward.records import Judgment, MetaJudgment, PreferencePair, Prompt, Response, read_jsonl
from metareward.stages.meta_judge import plan_battles
from metareward.templates import judge_prompt, meta_judge_prompt

PRIOR_JUDGE_PAIRS_PER_PROMPT = 0.25
"""Expected judge pairs per prompt before any iteration of the run has measured it (an assumption: the
one iteration at the paper's N we have measured, benchmarks/results/paper-iteration.json, gave 8 of 32;
the tiny runs give 0-1 of 8). Bounds never use it."""

FIELDS = ("requests", "samples", "count", "prompt_tokens", "generated_tokens", "train_tokens")


@dataclass
class StageWork:
    """One stage of one iteration. Numeric fields are exact when named in ``exact``, else upper bounds;
    ``expected`` holds the best estimate of each (equal to the field where exact)."""

    stage: str
    requests: int = 0
    samples: int = 0
    count: int = 0
    prompt_tokens: int = 0  # tokens prefilled: each request's prompt once (its samples share it)
    generated_tokens: int = 0  # bound: samples x max_tokens
    train_tokens: int = 0  # train: tokens of every sequence, one epoch
    shared_tokens: float = 0.0  # expected tokens of a prompt prefix that ``groups`` groups of requests share
    groups: float = 0.0  # how many such groups (0: requests share nothing beyond their own samples)
    exact: tuple[str, ...] = ()
    expected: dict[str, float] = field(default_factory=dict)
    basis: str = ""

    def estimate(self, name: str) -> float:
        return float(self.expected.get(name, getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, **{f: getattr(self, f) for f in FIELDS}, "exact": list(self.exact),
                "expected": {k: round(v, 1) for k, v in self.expected.items()}, "basis": self.basis}


@dataclass
class Measured:
    """Lengths and ratios of a finished earlier iteration of the same run (``iteration``)."""

    iteration: int
    response_tokens: float  # mean generated tokens of a response
    judgment_tokens: float  # mean generated tokens of a judgment
    meta_tokens: float | None  # mean generated tokens of a meta-judgment (None: no meta-judge stage)
    unique_ratio: float  # responses / (prompts x K)
    battles_per_prompt: float | None
    actor_pairs_per_prompt: float
    judge_pairs_per_prompt: float | None


def draw_prompts(cfg: RunConfig, pool: Sequence[Prompt]) -> list[list[Prompt]]:
    """Each iteration's prompts, drawn exactly as ``loop.Runner.run`` draws them."""
    order = list(pool)
    random.Random(cfg.seed).shuffle(order)
    out, start = [], 0
    for it in cfg.iterations:
        out.append(order[start:start + it.prompts])
        start += it.prompts
    return out


def fill_like(cfg: RunConfig, pool: Sequence[Prompt]) -> list[Prompt]:
    """A stand-in pool of as many prompts as ``cfg`` draws, cycling through ``pool``'s texts (ids made
    unique): for planning a config whose own pool is not on this machine from prompts of similar length."""
    needed = sum(it.prompts for it in cfg.iterations)
    return [Prompt(id=f"{pool[i % len(pool)].id}~{i // len(pool)}", text=pool[i % len(pool)].text) for i in range(needed)]


def _manifest(layout: IterationLayout) -> dict[str, Any]:
    return json.loads(layout.manifest.read_text(encoding="utf-8")) if layout.manifest.is_file() else {"stages": {}}


def _done(manifest: dict[str, Any], stage: str) -> bool:
    return bool(manifest.get("stages", {}).get(stage, {}).get("done"))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@dataclass
class Stored:
    """What iteration ``layout`` holds on disk: each artifact only when its stage is marked done."""

    manifest: dict[str, Any]
    responses: list[Response] | None = None
    judgments: list[Judgment] | None = None
    metas: list[MetaJudgment] | None = None
    pairs: list[PreferencePair] | None = None

    @classmethod
    def read(cls, layout: IterationLayout | None) -> Stored:
        if layout is None or not layout.exists():
            return cls({"stages": {}})
        m = _manifest(layout)
        out = cls(m)
        if _done(m, "actor"):
            out.responses = read_jsonl(layout.artifact("responses"), Response)
        if _done(m, "judge"):
            out.judgments = read_jsonl(layout.artifact("judgments"), Judgment)
        if _done(m, "meta_judge"):
            out.metas = read_jsonl(layout.artifact("meta_judgments"), MetaJudgment)
        if _done(m, "pairs"):
            out.pairs = (read_jsonl(layout.artifact("actor_pairs"), PreferencePair)
                         + read_jsonl(layout.artifact("judge_pairs"), PreferencePair))
        return out


def measure(layout: IterationLayout, cfg: RunConfig) -> Measured | None:
    """The lengths and ratios of a finished iteration (None unless its generation stages are done)."""
    stored = Stored.read(layout)
    m = stored.manifest
    if stored.responses is None or stored.judgments is None or not _done(m, "pairs"):
        return None
    prompts = m["stages"]["prompts"]["count"]
    k = cfg.actor.k
    meta = m["stages"].get("meta_judge", {})
    pairs = m["stages"]["pairs"]
    trained_judge = _done(m, "meta_judge")
    return Measured(
        iteration=layout.iteration,
        response_tokens=_mean([r.n_tokens for r in stored.responses]),
        judgment_tokens=_mean([j.n_tokens for j in stored.judgments]),
        meta_tokens=(meta.get("generated_tokens", 0) / meta["count"]) if trained_judge and meta.get("count") else None,
        unique_ratio=len(stored.responses) / (prompts * k) if prompts else 1.0,
        battles_per_prompt=meta.get("count", 0) / prompts if trained_judge and prompts else None,
        actor_pairs_per_prompt=pairs.get("actor_pairs", 0) / prompts if prompts else 0.0,
        judge_pairs_per_prompt=pairs.get("judge_pairs", 0) / prompts if trained_judge and prompts else None,
    )


def latest_measured(run: RunLayout | None, cfg: RunConfig, before: int) -> Measured | None:
    """``measure`` of the latest finished iteration before ``before``, or None."""
    if run is None:
        return None
    for i in sorted((i for i in run.iterations() if i < before), reverse=True):
        found = measure(run.iteration(i), cfg)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------- one iteration, stage by stage


@dataclass
class Known:
    """Records of the iteration that are known (stored, or computed without a model): each stage's
    count is exact when its inputs are known."""

    responses: list[Response] | None = None
    judgments: list[Judgment] | None = None
    metas: list[MetaJudgment] | None = None
    pairs: list[PreferencePair] | None = None
    generated: dict[str, int] = field(default_factory=dict)  # a finished stage's generated tokens (manifest)

    @classmethod
    def of(cls, stored: Stored) -> Known:
        stages = stored.manifest.get("stages", {})
        generated = {name: int(e["generated_tokens"]) for name, e in stages.items()
                     if e.get("done") and "generated_tokens" in e}
        return cls(stored.responses, stored.judgments, stored.metas, stored.pairs, generated)


SENTINEL = "\x00"
"""Filled in for the first part that differs between requests, to cut a template's shared prefix there (a
prompt that itself holds it only shortens the estimate of the shared part)."""


def _head(text: str, sentinel: str) -> str:
    """``text`` up to ``sentinel``: the part of a filled template that every request of a group shares."""
    return text.split(sentinel, 1)[0]


def _scale(value: float, ratio: float | None) -> float:
    return value if ratio is None else value * ratio


def plan_iteration(cfg: RunConfig, index: int, prompts: Sequence[Prompt], tokens: TokenCounter,
                   known: Known | None = None, measured: Measured | None = None,
                   pair_builder: Any = None) -> list[StageWork]:
    """The work of every stage of iteration ``index`` (1-based) over ``prompts``.

    ``known`` holds the records that exist; ``pair_builder(responses, judgments, metas)`` returns the
    pairs the loop would build from them (``whatif.loop_pairs``), so the pairs stage is exact once its
    inputs exist. ``measured`` supplies the expected lengths and ratios in place of bounds."""
    known = known or Known()
    works = [StageWork("prompts", count=len(prompts), exact=("count",), basis="drawn from the pool")]
    actor_work = _actor(cfg, prompts, tokens, known, measured)
    works.append(actor_work)
    judge_work = _judge(cfg, prompts, tokens, known, measured, actor_work)
    works.append(judge_work)
    if cfg.judge_trained(index):
        works.append(_meta_judge(cfg, index, prompts, tokens, known, measured))
    pairs_work, pairs = _pairs(cfg, index, prompts, known, measured, pair_builder)
    works.append(pairs_work)
    works.append(_train(cfg, prompts, tokens, pairs, pairs_work, measured))
    for w in works:  # a finished stage generated what its manifest says
        if w.stage in known.generated:
            w.expected["generated_tokens"] = float(known.generated[w.stage])
    return works


def _actor(cfg: RunConfig, prompts: Sequence[Prompt], tokens: TokenCounter, known: Known,
           measured: Measured | None) -> StageWork:
    p, k = len(prompts), cfg.actor.k
    bound = p * k * cfg.actor.max_tokens
    w = StageWork("actor", requests=p, samples=p * k, count=p * k, generated_tokens=bound,
                  prompt_tokens=sum(tokens.chats([q.text for q in prompts])),
                  exact=("requests", "samples", "prompt_tokens"))
    ratio = measured.unique_ratio if measured else None
    if known.responses is not None:
        w.count, w.exact = len(known.responses), (*w.exact, "count")
        ratio = len(known.responses) / (p * k) if p else 1.0
        w.basis = "responses stored"
    else:
        w.basis = "count: every sample unique (bound)"
    w.expected = {"count": _scale(p * k, ratio),
                  "generated_tokens": p * k * measured.response_tokens if measured else bound}
    if measured:
        w.basis += f"; lengths measured in iteration {measured.iteration}"
    return w


def _judge(cfg: RunConfig, prompts: Sequence[Prompt], tokens: TokenCounter, known: Known,
           measured: Measured | None, actor_work: StageWork) -> StageWork:
    generates = cfg.judge.is_self() or cfg.judge.kind == "model"  # else a function: one judgment per response
    n = cfg.judge.n if generates else 1
    template = cfg.judge.template
    by_id = {q.id: q for q in prompts}
    if known.responses is not None:
        r = len(known.responses)
        texts = [judge_prompt(by_id[x.prompt_id].text, x.text, template) for x in known.responses]
        ptok = sum(tokens.chats(texts)) if generates else 0
        w = StageWork("judge", requests=r, samples=r * n, count=r * n, prompt_tokens=ptok,
                      exact=("requests", "samples", "count", "prompt_tokens"), basis="responses stored")
        expected_r = float(r)
        expected_ptok = float(ptok)
    else:
        k = cfg.actor.k
        empty = [k * n_tok for n_tok in tokens.chats([judge_prompt(q.text, "", template) for q in prompts])]  # K each
        r = len(prompts) * k
        resp = measured.response_tokens if measured else cfg.actor.max_tokens
        expected_r = actor_work.expected["count"]
        w = StageWork("judge", requests=r, samples=r * n, count=r * n,
                      prompt_tokens=(sum(empty) + r * cfg.actor.max_tokens) if generates else 0,
                      basis="bound: K unique responses per prompt, each of actor.max_tokens")
        expected_ptok = (sum(empty) * expected_r / r + expected_r * resp) if generates and r else 0.0
    w.generated_tokens = w.samples * cfg.judge.max_tokens if generates else 0
    if generates and w.requests:  # every judge prompt starts with the rubric: computed once (shared roots, prefix caching)
        w.shared_tokens, w.groups = float(tokens.text(_head(judge_prompt(SENTINEL, "", template), SENTINEL))), 1.0
    per = measured.judgment_tokens if measured else cfg.judge.max_tokens
    w.expected = {"requests": expected_r, "samples": expected_r * n, "count": expected_r * n,
                  "prompt_tokens": expected_ptok, "generated_tokens": expected_r * n * per if generates else 0.0}
    if not generates:
        w.basis += f"; judge.kind {cfg.judge.kind}: one judgment per response, no generation"
    return w


def _meta_judge(cfg: RunConfig, index: int, prompts: Sequence[Prompt], tokens: TokenCounter, known: Known,
                measured: Measured | None) -> StageWork:
    template = cfg.meta_judge.template
    by_id = {q.id: q for q in prompts}
    if known.judgments is not None and known.responses is not None:
        battles = plan_battles(prompts, known.judgments, cfg.seed, index)
        responses = {r.id: r for r in known.responses}
        texts = [meta_judge_prompt(by_id[b.prompt_id].text, responses[b.response_id].text, b.a.text, b.b.text,
                                   template) for b in battles]
        b = len(battles)
        ptok = sum(tokens.chats(texts))
        chosen = {x.response_id: x.prompt_id for x in battles}
        heads = tokens.texts([_head(meta_judge_prompt(by_id[q].text, responses[r].text, SENTINEL, "", template), SENTINEL)
                              for r, q in chosen.items()])
        shared, groups = (sum(heads) / len(heads), float(len(heads))) if heads else (0.0, 0.0)
        w = StageWork("meta_judge", requests=b, samples=b, count=b, prompt_tokens=ptok, shared_tokens=shared,
                      groups=groups, exact=("requests", "samples", "count", "prompt_tokens"), basis="judgments stored")
        w.expected = {"prompt_tokens": float(ptok)}
    else:
        n = cfg.judge.n
        b = len(prompts) * n * (n - 1)
        empty = tokens.chats([meta_judge_prompt(q.text, "", "", "", template) for q in prompts])
        per_battle = cfg.actor.max_tokens + 2 * cfg.judge.max_tokens
        w = StageWork("meta_judge", requests=b, samples=b, count=b,
                      prompt_tokens=sum(empty) * n * (n - 1) + b * per_battle,
                      basis="bound: N(N-1) battles per prompt")
        expected_b = measured.battles_per_prompt * len(prompts) if measured and measured.battles_per_prompt is not None \
            else float(b)
        lengths = (measured.response_tokens + 2 * measured.judgment_tokens) if measured else per_battle
        mean_empty = sum(empty) / len(empty) if empty else 0.0
        w.expected = {"requests": expected_b, "samples": expected_b, "count": expected_b,
                      "prompt_tokens": expected_b * (mean_empty + lengths)}
        # the battles of one response share rubric, question and response: one group per prompt
        heads = tokens.texts([_head(meta_judge_prompt(q.text, "", SENTINEL, "", template), SENTINEL) for q in prompts])
        resp = measured.response_tokens if measured else cfg.actor.max_tokens
        w.shared_tokens = (sum(heads) / len(heads) + resp) if heads else 0.0
        w.groups = float(len(prompts)) * (expected_b / b if b else 0.0)
    w.generated_tokens = w.samples * cfg.meta_judge.max_tokens
    per = measured.meta_tokens if measured and measured.meta_tokens is not None else cfg.meta_judge.max_tokens
    w.expected["generated_tokens"] = w.estimate("samples") * per
    return w


def _yields(measured: Measured | None) -> tuple[float, float]:
    """Expected actor and judge pairs per prompt: measured, else one actor pair per prompt (the bound)
    and ``PRIOR_JUDGE_PAIRS_PER_PROMPT``."""
    if measured is None:
        return 1.0, PRIOR_JUDGE_PAIRS_PER_PROMPT
    return measured.actor_pairs_per_prompt, measured.judge_pairs_per_prompt or 0.0


def _pairs(cfg: RunConfig, index: int, prompts: Sequence[Prompt], known: Known, measured: Measured | None,
           pair_builder: Any) -> tuple[StageWork, list[PreferencePair] | None]:
    p = len(prompts)
    judge = cfg.judge_trained(index)
    ready = known.responses is not None and known.judgments is not None and (known.metas is not None or not judge)
    if ready and pair_builder is not None:
        pairs = pair_builder(known.responses, known.judgments, known.metas or [])
        w = StageWork("pairs", count=len(pairs), exact=("count",), basis="judgments and meta-judgments stored")
        return w, pairs
    actor_yield, judge_yield = _yields(measured)
    w = StageWork("pairs", count=p * (2 if judge else 1), basis="bound: one actor and one judge pair per prompt",
                  expected={"count": p * (actor_yield + (judge_yield if judge else 0.0))})
    return w, None


def _train(cfg: RunConfig, prompts: Sequence[Prompt], tokens: TokenCounter, pairs: list[PreferencePair] | None,
           pairs_work: StageWork, measured: Measured | None) -> StageWork:
    """DPO's examples and the tokens of their sequences (bound: every pair at max_tokens; expected: the
    expected yields at measured lengths, else at max_tokens)."""
    cap = cfg.training.max_length
    if pairs is not None:
        heads = tokens.chats([x.prompt for x in pairs])
        chosen = tokens.texts([x.chosen for x in pairs])
        rejected = tokens.texts([x.rejected for x in pairs])
        seqs = sum(min(cap, h + c) + min(cap, h + r) for h, c, r in zip(heads, chosen, rejected, strict=True))
        return StageWork("train", count=len(pairs), train_tokens=seqs, exact=("count",),
                         expected={"train_tokens": float(seqs)}, basis="pairs known; tokens of both sequences")
    heads = tokens.chats([q.text for q in prompts])
    judge = pairs_work.count > len(prompts)
    jheads = tokens.chats([judge_prompt(q.text, "", cfg.judge.template) for q in prompts]) if judge else []
    resp, jt = cfg.actor.max_tokens, cfg.judge.max_tokens

    def sequences(resp: float, jt: float, actor_yield: float, judge_yield: float) -> float:
        a = sum(min(cap, h + resp) for h in heads) * 2 * actor_yield
        return a + sum(min(cap, h + resp + jt) for h in jheads) * 2 * judge_yield

    bound = round(sequences(resp, jt, 1.0, 1.0))
    if measured:
        resp, jt = measured.response_tokens, measured.judgment_tokens
    return StageWork("train", count=pairs_work.count, train_tokens=bound, basis="bound: every pair at max_tokens",
                     expected={"count": pairs_work.estimate("count"),
                               "train_tokens": sequences(resp, jt, *_yields(measured))})
