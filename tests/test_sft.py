"""SFT on EFT: config validation, data loading errors, and a tiny real fine-tune that loads and generates."""

from __future__ import annotations

import json

import pytest

from metareward.errors import InputError
from metareward.training.sft import SFTConfig, load_sft_jsonl, to_conversational


def test_config_defaults_and_validation(tmp_path):
    cfg = SFTConfig()
    assert (cfg.learning_rate, cfg.min_learning_rate, cfg.epochs) == (1e-6, 1e-7, 2.0)
    assert cfg.batch_size * cfg.gradient_accumulation == 16
    with pytest.raises(InputError, match=r"sft.data: a train JSONL is required"):
        cfg.validate()
    data = tmp_path / "t.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n')
    SFTConfig(data=str(data)).validate()
    with pytest.raises(InputError, match=r"sft.learning_rate: must be > 0"):
        SFTConfig(data=str(data), learning_rate=0).validate()
    with pytest.raises(InputError, match=r"sft.eval_data: file not found"):
        SFTConfig(data=str(data), eval_data=str(tmp_path / "nope.jsonl")).validate()
    with pytest.raises(InputError, match=r"sft.min_learning_rate"):
        SFTConfig(data=str(data), min_learning_rate=1.0).validate()


def test_load_sft_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "completion": "c", "score": 4}\n\n{"prompt": "p"}\n')
    with pytest.raises(InputError, match=r"d.jsonl:3: field 'completion' must be a non-empty string"):
        load_sft_jsonl(path)
    path.write_text('{"prompt": "p", "completion": "c"}\nnot json\n')
    with pytest.raises(InputError, match=r"d.jsonl:2: invalid JSON"):
        load_sft_jsonl(path)


def test_conversational_prompt_completion_rows():
    assert to_conversational([{"prompt": "P", "completion": "C"}]) == [
        {"prompt": [{"role": "user", "content": "P"}], "completion": [{"role": "assistant", "content": "C"}]}
    ]


def test_config_loads_through_the_run_config_type_checker(tmp_path):
    """The lead adds ``sft: SFTConfig | None`` to RunConfig: every field must be a type the loader knows."""
    from metareward.typed_yaml import build

    cfg = build(SFTConfig, {"data": "x.jsonl", "epochs": 1, "precision": "float32", "eval_data": None}, "sft")
    assert cfg.epochs == 1.0 and cfg.precision == "float32"
    with pytest.raises(InputError, match=r"sft.batch_size: expected an integer"):
        build(SFTConfig, {"batch_size": "four"}, "sft")


def _examples(n: int) -> list[dict]:
    """Short judge-style examples (the real judge prompt is ~450 tokens: too slow for a CPU test)."""
    return [
        {"id": f"q{i}/r0/j0", "prompt": f"Rate this answer to 'What is {i} plus {i}?': {2 * i}.",
         "completion": "The answer is correct and direct.\nScore: 5", "score": 5.0, "human_rank": 0}
        for i in range(n)
    ]


def _completion_nll(model, tokenizer, row) -> float:
    import torch

    msgs = [{"role": "user", "content": row["prompt"]}]
    prompt_ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"]
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": row["completion"]}],
                                         tokenize=True, return_dict=True)["input_ids"]
    ids = torch.tensor([full])
    labels = ids.clone()
    labels[0, : len(prompt_ids)] = -100
    with torch.no_grad():
        return float(model(input_ids=ids, labels=labels).loss)


@pytest.mark.slow
def test_run_sft_tiny_real_model(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metareward.models import resolve_model
    from metareward.training.sft import run_sft

    torch.set_num_threads(1)
    base = resolve_model("smollm2-135m")
    rows = _examples(4)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evalf = tmp_path / "eval.jsonl"
    evalf.write_text(json.dumps(rows[0]) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(base)
    before = _completion_nll(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tokenizer, rows[0])

    cfg = SFTConfig(data=str(train), eval_data=str(evalf), learning_rate=1e-4, min_learning_rate=1e-5, max_steps=1,
                    batch_size=4, gradient_accumulation=1, warmup_ratio=0.0, max_length=1024, precision="float32")
    cfg.validate()
    out = tmp_path / "model"
    metrics = run_sft(base, str(train), str(out), cfg, threads=1)
    assert metrics["examples"] == 4 and metrics["dropped_too_long"] == 0 and metrics["steps"] == 1
    assert metrics["eval_examples"] == 1 and metrics["eval_loss"] is not None
    assert metrics["precision"] == "float32"
    assert not (tmp_path / "model.work").exists()
    # the saved folder loads, learned the judgment (lower NLL on the completion), and generates
    tuned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    after = _completion_nll(tuned, AutoTokenizer.from_pretrained(out), rows[0])
    assert after < before
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    gen = tuned.generate(**ids, max_new_tokens=6, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]
    assert isinstance(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True), str)
