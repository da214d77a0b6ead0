"""One reduced iteration of the experiment's control arm on the embedded model (the real loop, engine and
DPO): every actor pair's chosen response satisfies more of its prompt's constraints than its rejected one,
and DPO moves the policy the intended way: the DPO loss on the iteration's pairs, ln 2 at the start
(policy = reference), is lower for the trained model. The effect on held-out accuracy is measured by the
benchmark (docs/experiment.md), not here."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("if_verifiable")
torch = pytest.importorskip("torch")

from metareward.config import IterationConfig, RunConfig  # noqa: E402
from metareward.layout import RunLayout  # noqa: E402
from metareward.loop import Runner  # noqa: E402
from metareward.models import resolve_model  # noqa: E402
from metareward.records import PreferencePair, read_jsonl  # noqa: E402
from metareward.verifiable.constraints import load_constraints  # noqa: E402
from metareward.verifiable.verify import verify  # noqa: E402

POOL = "builtin:verifiable_train"


def pair_logps(model_path: str, pairs: list[PreferencePair]) -> torch.Tensor:
    """Summed log-probabilities of each pair's (chosen, rejected) under ``model_path`` (TRL's tokenization)."""
    from metareward.training.common import load_for_training
    from metareward.training.dpo_native import reference_logps, tokenize_pair

    loaded = load_for_training(model_path, "float32", threads=0)
    rows = [{"prompt": [{"role": "user", "content": p.prompt}], "chosen": p.chosen, "rejected": p.rejected}
            for p in pairs]
    items = [tokenize_pair(loaded.tokenizer, r, 1024) for r in rows]
    return reference_logps(loaded.model, items, 4, loaded.tokenizer.pad_token_id)


def dpo_loss_on(policy: torch.Tensor, ref: torch.Tensor, beta: float) -> float:
    """Mean DPO loss of the policy's pair log-probabilities against the reference's."""
    from metareward.training.dpo_native import dpo_loss

    loss, _, _ = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta)
    return float(loss.mean())


@pytest.mark.slow
def test_one_control_iteration_prefers_satisfied_constraints_and_lowers_the_dpo_loss(tmp_path):
    cfg = RunConfig(run_dir=str(tmp_path / "run"), prompts=POOL, mode="self-rewarding")
    cfg.judge.kind, cfg.judge.n = "verifier", 1
    cfg.engine.threads, cfg.engine.batch_size = 2, 64
    cfg.actor.k, cfg.actor.max_tokens = 4, 48
    cfg.training.backend, cfg.training.learning_rate, cfg.training.epochs = "native", 5e-5, 2
    cfg.training.batch_size, cfg.training.gradient_accumulation, cfg.training.warmup_ratio = 4, 1, 0.0
    cfg.training.max_length = 1024
    cfg.iterations = [IterationConfig(prompts=10, rho=0.0, train_judge=False)]
    runner = Runner(cfg, echo=lambda s: None)
    runner.preflight()
    runner.run()

    it = RunLayout(cfg.run_dir).iteration(1)
    pairs = read_jsonl(it.artifact("actor_pairs"), PreferencePair)
    assert pairs, "no prompt had responses satisfying different numbers of constraints"
    constraints = load_constraints(POOL)
    for p in pairs:
        chosen = verify(p.prompt_id, p.prompt, constraints[p.prompt_id], p.chosen)
        rejected = verify(p.prompt_id, p.prompt, constraints[p.prompt_id], p.rejected)
        assert chosen.satisfied > rejected.satisfied, p.id
        assert p.chosen_score == pytest.approx(5 * chosen.satisfied / chosen.total, abs=1e-6)

    trained = str(it.model)
    seed = pair_logps(resolve_model(cfg.model), pairs)  # the reference, and the policy before training
    before = dpo_loss_on(seed, seed, cfg.training.beta)
    after = dpo_loss_on(pair_logps(trained, pairs), seed, cfg.training.beta)
    assert before == pytest.approx(math.log(2), abs=1e-6)
    assert after < before - 0.01
