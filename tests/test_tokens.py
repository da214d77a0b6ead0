"""engines/tokens.py: the one stop set and choice split that every engine uses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metareward.engines import tokens
from metareward.engines.tokens import END_OF_TURN, choice_context, cut_at_stop, stop_token_ids


class FakeTokenizer:
    """Greedy longest-match tokenizer over a fixed vocabulary (enough to exercise the rules)."""

    def __init__(self, vocab: dict[str, int], eos: int | None, unk: int | None):
        self.vocab, self.eos_token_id, self.unk_token_id = vocab, eos, unk

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.vocab.get(token, self.unk_token_id)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out, i = [], 0
        while i < len(text):
            piece = max((p for p in self.vocab if text.startswith(p, i)), key=len)
            out.append(self.vocab[piece])
            i += len(piece)
        return out


VOCAB = {"<unk>": 0, "<|im_end|>": 2, "<|endoftext|>": 5, "Score:": 10, " 1": 11, " 2": 12, " ": 13, "1": 14,
         "2": 15, "Winner": 16}


def test_stop_set_is_eos_generation_eos_and_known_end_of_turn_tokens():
    tok = FakeTokenizer(VOCAB, eos=5, unk=0)
    assert stop_token_ids(tok) == [2, 5]  # <|eot_id|>, <|end|>, <end_of_turn> map to <unk>: left out
    assert stop_token_ids(tok, generation_eos=7) == [2, 5, 7]
    assert stop_token_ids(tok, generation_eos=[5, 8, 7]) == [2, 5, 7, 8]
    no_unk = FakeTokenizer(VOCAB, eos=None, unk=None)  # unknown tokens convert to None
    assert stop_token_ids(no_unk) == [2]


def test_stop_set_reads_the_generation_config_of_a_model_folder(tmp_path):
    tok = FakeTokenizer(VOCAB, eos=5, unk=0)
    assert stop_token_ids(tok, str(tmp_path)) == [2, 5]  # no generation_config.json
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [9, 2]}))
    assert stop_token_ids(tok, str(tmp_path)) == [2, 5, 9]
    assert stop_token_ids(tok, str(tmp_path), generation_eos=4) == [2, 4, 5]  # given ids win over the file


def test_end_of_turn_tokens_cover_the_chat_formats():
    assert END_OF_TURN == ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def test_every_engine_uses_the_shared_functions():
    import ast
    from pathlib import Path

    import metareward.engines as engines

    root = Path(engines.__file__).parent
    for rel in ("hf/engine.py", "vllm.py", "openai.py"):
        tree = ast.parse((root / rel).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.col_offset == 0}
        assert not defined & {"stop_token_ids", "choice_context", "cut_at_stop"}, rel  # no private copy
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == tokens.__name__
                    for a in n.names}
        assert imported, f"{rel} does not import {tokens.__name__}"


def test_choice_context_absorbs_the_prefix_space_into_the_choice_token():
    tok = FakeTokenizer(VOCAB, eos=5, unk=0)
    assert choice_context(tok, "Score: ", ["1", "2"]) == ([10], [11, 12])
    assert choice_context(tok, "Score:", [" 1", " 2"]) == ([10], [11, 12])
    assert choice_context(tok, "", ["1", "2"]) == ([], [14, 15])


def test_choice_context_rejects_choices_that_are_not_single_tokens():
    tok = FakeTokenizer(VOCAB, eos=5, unk=0)
    with pytest.raises(ValueError, match="not single tokens after 'Score: '"):
        choice_context(tok, "Score: ", ["1", "12"])
    with pytest.raises(ValueError, match="not single tokens"):
        choice_context(tok, " ", ["1", "2"])  # the prefix merges into each choice: no context token left


def test_cut_at_stop():
    assert cut_at_stop([4, 7, 2, 9, 2], [2, 5]) == ([4, 7], True)
    assert cut_at_stop([4, 7], [2]) == ([4, 7], False)
    assert cut_at_stop([], [2]) == ([], False)


@given(st.lists(st.integers(0, 9), max_size=30), st.sets(st.integers(0, 9), max_size=3))
def test_cut_at_stop_keeps_the_longest_stop_free_prefix(seq, stops):
    kept, hit = cut_at_stop(seq, stops)
    assert seq[: len(kept)] == kept and not set(kept) & stops
    assert hit == (len(kept) < len(seq)) and (not hit or seq[len(kept)] in stops)
