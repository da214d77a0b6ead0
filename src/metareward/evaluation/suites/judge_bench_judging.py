"""Asking a judge about gold pairs (``judge_bench``), pointwise and pairwise, through the annotation cache.

* **pointwise** is the training judge itself: ``stages.judge.run`` (the project's judge prompt, N
  sampled judgments per output, ``free_text`` or ``constrained`` scoring) on both outputs of each pair;
  an output's score is the mean of its valid judgment scores, and the higher mean wins.
* **pairwise** uses our own prompt (``templates/pairwise_judge.txt``: the meta-judge's style applied to
  two responses), greedy, in both orders. ``free_text`` reads the last ``Winner: Response A|B``
  (``parsing.parse_response_verdict``); ``constrained`` cuts the text before its verdict, appends
  ``\\nWinner: Response `` and takes the more probable of A and B (equal: no verdict), read as a
  ``ChoiceFollowUp`` exactly as the meta-judge stage reads its verdicts.

Both run their model passes through ``CachedPasses``: every request's output is stored in the eval
folder's annotation cache (``annotation_cache.AnnotationCache``) under a key of the judge, the pass,
the full prompt and every decoding setting, as soon as the engine yields it. A rerun, a rerun after a
kill, or a suite that shares pairs with another (``judge-injection``'s ``plain`` pairs are LLMBar
Natural's, with the same ids and so the same seeds) judges only what is not stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from metareward.config import JudgeConfig
from metareward.engines.base import (
    ChoiceFollowUp,
    ChoiceOutput,
    ChoiceRequest,
    Engine,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
)
from metareward.errors import InputError
from metareward.evaluation.suites import judge_bench as jb
from metareward.evaluation.suites.annotation_cache import AnnotationCache, annotation_key
from metareward.evaluation.suites.judge_bench import (
    MODES,
    GoldPair,
    Outcome,
    pairwise_outcome,
    pointwise_outcome,
)
from metareward.evaluation.suites.run import JudgeSpec, LazyJudge
from metareward.parsing import (
    check_probabilities,
    close_open_fence,
    parse_response_verdict,
    truncate_before_verdict,
)
from metareward.records import Prompt, Response
from metareward.stages import judge as judge_stage
from metareward.stages.common import request_seed, user_turn
from metareward.templates import load_template, pairwise_judge_prompt

PAIRWISE_PASS = "pairwise_judge"
PAIRWISE_VERDICT_PASS = "pairwise_verdict"
VERDICT_CHOICES = ("A", "B")
PAIRWISE_TEMPLATE = "pairwise_judge.txt"


class CachedPasses:
    """``stages.common.Passes`` through an annotation cache: each request's output is looked up under a
    key of (judge, pass, messages, decoding settings) and only the missing ones go to ``engine()``
    (called only then, so a fully cached judge loads no model)."""

    def __init__(self, cache: AnnotationCache, engine: Callable[[], Engine], judge_id: str,
                 log: Callable[[str], None] = print):
        self.cache = cache
        self.engine = engine
        self.judge_id = judge_id
        self.log = log

    def _key(self, name: str, messages: Sequence[Mapping[str, str]], settings: Any) -> str:
        return annotation_key(self.judge_id, name, [dict(m) for m in messages], "", "", settings)  # type: ignore[arg-type]

    def generate(self, name: str, requests: Sequence[GenerationRequest]) -> dict[str, GenerationOutput]:
        keys = [self._key(name, r.messages, {
            "sampling": dataclasses.asdict(r.sampling), "n": r.n, "seed": r.seed,
            "follow_up": list(r.follow_up.choices) if r.follow_up else None}) for r in requests]
        values = self.cache.annotate(
            requests, keys, name, lambda rs: self.engine().generate(rs),
            lambda o: (o.id, {k: v for k, v in o.to_columns().items() if k != "id"}),  # the id is the key
            lambda r: r.id, self.log)
        return {rid: GenerationOutput.from_columns({"id": rid, **v}) for rid, v in values.items()}

    def choices(self, name: str, requests: Sequence[ChoiceRequest]) -> dict[str, ChoiceOutput]:
        keys = [self._key(name, r.messages, {"prefix": r.assistant_prefix, "choices": list(r.choices)})
                for r in requests]
        values = self.cache.annotate(requests, keys, name, lambda rs: self.engine().choice_probs(rs),
                                     lambda o: (o.id, o.probs), lambda r: r.id, self.log)
        return {rid: ChoiceOutput(id=rid, probs=v) for rid, v in values.items()}


# ---------------------------------------------------------------------------------------- pointwise


def response_id(pair: GoldPair, k: int) -> str:
    """Output ``k``'s record id: shared by every pair that shows the same text for the same source pair
    (an injected pair's unchanged output is judged once with its plain pair)."""
    source = pair.id.split("+", 1)[0]
    changed = pair.injection is not None and k != pair.label
    return f"{pair.id if changed else source}/o{k}"


def pointwise(pairs: Sequence[GoldPair], cfg: JudgeConfig, seed: int, passes: CachedPasses) -> list[Outcome]:
    """Every output judged by the training judge stage (``stages.judge.run``); the higher mean score wins."""
    prompts: dict[str, Prompt] = {}
    responses: dict[str, Response] = {}
    for p in pairs:
        source = p.id.split("+", 1)[0]
        prompts[source] = Prompt(source, p.instruction)
        for k in (1, 2):
            rid = response_id(p, k)
            responses.setdefault(rid, Response(id=rid, prompt_id=source, index=k - 1, text=p.output(k)))
    judgments = judge_stage.run(prompts, list(responses.values()), cfg, seed, 0, passes)
    scores = judge_stage.valid_scores(judgments)

    def mean(rid: str) -> float | None:
        s = scores.get(rid) or []
        return sum(s) / len(s) if s else None

    return [pointwise_outcome(p, mean(response_id(p, 1)), mean(response_id(p, 2))) for p in pairs]


# ---------------------------------------------------------------------------------------- pairwise


def verdict_prefix(text: str) -> str:
    """The assistant text after which the constrained verdict letter is read (meta-judge style)."""
    body = close_open_fence(truncate_before_verdict(text))
    return f"{body}\nWinner: Response " if body else "Winner: Response "


def pairwise_requests(pairs: Sequence[GoldPair], cfg: JudgeConfig, seed: int,
                      template: str | None = None) -> list[GenerationRequest]:
    """Two greedy requests per pair: ``<id>|12`` (output 1 as Response A) and ``<id>|21``."""
    sampling = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=cfg.max_tokens)
    follow = ChoiceFollowUp(verdict_prefix, VERDICT_CHOICES) if cfg.scoring == "constrained" else None
    reqs = []
    for p in pairs:
        for order, (a, b) in (("12", (1, 2)), ("21", (2, 1))):
            rid = f"{p.id}|{order}"
            reqs.append(GenerationRequest(
                id=rid, messages=user_turn(pairwise_judge_prompt(p.instruction, p.output(a), p.output(b), template)),
                sampling=sampling, n=1, seed=request_seed(seed, 0, PAIRWISE_PASS, rid), follow_up=follow))
    return reqs


def letter(probs: Sequence[float] | None) -> str | None:
    """The more probable of A and B; None for equal or unusable probabilities (no verdict)."""
    if probs is None or check_probabilities(probs, len(VERDICT_CHOICES)) is not None:
        return None
    return "A" if probs[0] > probs[1] else "B" if probs[1] > probs[0] else None


def pairwise(pairs: Sequence[GoldPair], cfg: JudgeConfig, seed: int, passes: CachedPasses,
             template: str | None = None) -> list[Outcome]:
    """Both orders of every pair judged with the pairwise prompt; see the module docstring."""
    reqs = pairwise_requests(pairs, cfg, seed, template)
    outs = passes.generate(PAIRWISE_PASS, reqs)
    if cfg.scoring == "constrained":
        probs = {r.id: outs[r.id].samples[0].choice_probs for r in reqs}
        unread = [r for r in reqs if probs[r.id] is None]
        if unread:
            read = passes.choices(PAIRWISE_VERDICT_PASS, [
                ChoiceRequest(id=r.id, messages=r.messages, choices=VERDICT_CHOICES,
                              assistant_prefix=verdict_prefix(outs[r.id].samples[0].text)) for r in unread])
            probs.update({rid: o.probs for rid, o in read.items()})
        verdicts = {rid: letter(p) for rid, p in probs.items()}
    else:
        verdicts = {r.id: parse_response_verdict(outs[r.id].samples[0].text) for r in reqs}
    return [pairwise_outcome(p, verdicts[f"{p.id}|12"], verdicts[f"{p.id}|21"]) for p in pairs]


def template_name(template: str | None) -> str:
    """How a block names the pairwise template: the file given, or the packaged one."""
    load_template(template, PAIRWISE_TEMPLATE)  # a missing file fails here, before any judging
    return template or f"builtin:{PAIRWISE_TEMPLATE}"


# ---------------------------------------------------------------------------------------- the suites


def evaluate(
    suites: Sequence[str],
    judges: Sequence[tuple[str, JudgeSpec]],
    make_judge: Callable[[JudgeSpec], Engine],
    cfg: JudgeConfig,
    cache: AnnotationCache,
    limit: int = 0,
    seed: int = 0,
    rounds: int = 1000,
    log: Callable[[str], None] = print,
    modes: Sequence[str] = MODES,
) -> dict[str, Any]:
    """The ``suites`` blocks of the judge suites: every judge (label, spec) judges every suite's pairs in
    each of ``modes`` (pointwise, pairwise: one pass each over all suites' pairs, so shared pairs are asked
    once); a judge whose every answer is cached is never loaded. Block layout in docs/evaluation.md.
    ``modes`` lets a user skip a way of judging (pairwise prompts hold both outputs: the longer pass)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise InputError(f"judge modes: {', '.join(unknown) or '(none)'}: expected one or both of {', '.join(MODES)}")
    loaded = {s: jb.load_suite(s, limit) for s in suites}
    pairs = [p for s in suites for p in loaded[s][0]]
    results: dict[str, dict[str, Any]] = {s: {} for s in suites}
    for label, spec in judges:
        log(f"[eval] judge suites {list(suites)}: judge {label} ({spec.model}, {spec.engine.name})")
        engine = LazyJudge(lambda spec=spec: make_judge(spec), log)
        passes = CachedPasses(cache, lambda engine=engine: engine, spec.id, log)
        try:
            ask = {"pointwise": pointwise, "pairwise": pairwise}
            by_mode = {mode: ask[mode](pairs, cfg, seed, passes) for mode in MODES if mode in modes}
        finally:
            engine.close()
        start = 0
        for s in suites:
            n = len(loaded[s][0])
            results[s][label] = {mode: jb.summarize(outs[start:start + n], rounds, seed) for mode, outs in by_mode.items()}
            start += n
    settings = {"n": cfg.n, "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
                "scoring": cfg.scoring, "template": cfg.template or "builtin:judge.txt"}
    mode_settings = {
        "pointwise": settings,
        "pairwise": {"template": template_name(None), "temperature": 0.0, "max_tokens": cfg.max_tokens,
                     "scoring": cfg.scoring, "orders": 2},
    }
    return {
        s: {
            "kind": "judge_accuracy",
            "judges": {label: {"model": spec.model, "engine": spec.engine.name} for label, spec in judges},
            **{mode: mode_settings[mode] for mode in MODES if mode in modes},
            "n": len(loaded[s][0]), "of": loaded[s][1], "strata": jb.strata(loaded[s][0]),
            "bootstrap_rounds": rounds,
            "results": results[s],
        }
        for s in suites
    }
