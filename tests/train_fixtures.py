"""Shared set-up of the training tests: an iteration directory whose pairs stage is done, and a tiny
random Llama folder with the embedded model's tokenizer (training it costs seconds, not minutes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from metareward.config import RunConfig, dump_config
from metareward.layout import RunLayout
from metareward.records import PreferencePair, write_jsonl_atomic
from metareward.store import IterationStore


def iteration_with_actor_pairs(
    cfg: RunConfig, model: str, qa: Sequence[tuple[str, str, str]]
) -> tuple[IterationStore, list[PreferencePair]]:
    """Write ``cfg`` to its run directory and iteration 1 with ``model`` as its starting model, one actor
    pair per (question, chosen, rejected) of ``qa`` and no judge pairs: what a training step reads."""
    run_dir = Path(cfg.run_dir)
    dump_config(cfg, run_dir / "config.yaml")
    store = IterationStore(RunLayout(run_dir).iteration(1))
    store.manifest["model_in"] = model
    store.save_manifest()
    pairs = [
        PreferencePair(id=f"p{i}", kind="actor", prompt_id=f"q{i}", prompt=q, chosen=c, rejected=r,
                       chosen_id=f"q{i}/r0", rejected_id=f"q{i}/r1", chosen_score=4.0, rejected_score=1.0)
        for i, (q, c, r) in enumerate(qa)
    ]
    write_jsonl_atomic(store.layout.artifact("actor_pairs"), pairs)
    write_jsonl_atomic(store.layout.artifact("judge_pairs"), [])
    return store, pairs


def save_tiny_llama(out: Path) -> str:
    """Save a tiny randomly initialised Llama (2 layers, width 32, tied embeddings, seed 0) with the
    embedded model's tokenizer to ``out``: a model folder the trainers and launchers load like the real one."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from metareward.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
