"""Prompt pool files and JSONL records: every malformed line is named."""

from __future__ import annotations

import json

import pytest

from metareward.errors import InputError
from metareward.pool import load_prompt_pool
from metareward.records import Judgment, Prompt, read_jsonl, write_jsonl_atomic


def test_jsonl_pool_ids_dedup_and_builtin(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": "Hi"}\n\n{"text": " Hi "}\n{"instruction": "Bye"}\n')
    pool = load_prompt_pool(path)
    assert [(p.id, p.text) for p in pool] == [("a", "Hi"), ("p000004", "Bye")]
    assert len(load_prompt_pool("builtin:seed_prompts")) >= 200


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "ok"}\n{"prompt": \n', "p.jsonl:2: invalid JSON"),
        ('{"prompt": "ok"}\n{"question": "x"}\n', "p.jsonl:2: no prompt field"),
        ('{"prompt": ""}\n', "p.jsonl:1: field 'prompt' must be a non-empty string"),
        ('{"prompt": 5}\n', "p.jsonl:1: field 'prompt' must be a non-empty string"),
        ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "p.jsonl:2: duplicate id 'a' (first on line 1)"),
        ('{"id": "a/b", "prompt": "x"}\n', "p.jsonl:1: field 'id' must be a non-empty string without '/'"),
        ("[1, 2]\n", "p.jsonl:1: expected a JSON object"),
        ("\n\n", "p.jsonl: no prompts found"),
    ],
)
def test_malformed_pool_names_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as e:
        load_prompt_pool(path)
    assert message in str(e.value)


def test_unknown_builtin_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="no built-in prompt set 'nope'"):
        load_prompt_pool("builtin:nope")
    with pytest.raises(InputError, match="prompts file not found"):
        load_prompt_pool(tmp_path / "x.txt")


def test_records_roundtrip_and_errors(tmp_path):
    j = Judgment(id="p/r0/j1", response_id="p/r0", prompt_id="p", index=1, text="ok\nScore: 4", score=4.0)
    path = tmp_path / "j.jsonl"
    assert write_jsonl_atomic(path, [j, j]) == 2
    assert read_jsonl(path, Judgment) == [j, j]
    assert not (tmp_path / "j.jsonl.tmp").exists()
    path.write_text(json.dumps({**j.__dict__, "extra": 1}) + "\n")
    with pytest.raises(InputError, match=r"j.jsonl:1: unknown field\(s\) \['extra'\]"):
        read_jsonl(path, Judgment)
    path.write_text('{"id": "x"}\n')
    with pytest.raises(InputError, match=r"j.jsonl:1: missing field\(s\)"):
        read_jsonl(path, Judgment)


def test_save_model_atomic_replaces_whole_folder(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from metareward.models import save_model_atomic

    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")))
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    save_model_atomic(model, tok, out)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize("line", ['{"prompt": \n', "[1, 2]\n", '"text"\n'])
def test_pool_and_records_name_a_malformed_line_alike(tmp_path, line):
    """One JSONL reader (``records.iter_json_objects``): a line that is not a JSON object is reported in the
    same words whether it is in a prompt pool or in a record file."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "text": "ok"}\n\n' + line)
    with pytest.raises(InputError) as pool_error:
        load_prompt_pool(path)
    with pytest.raises(InputError) as records_error:
        read_jsonl(path, Prompt)
    assert str(pool_error.value) == str(records_error.value)
    assert str(pool_error.value).startswith(f"{path}:3: ")
