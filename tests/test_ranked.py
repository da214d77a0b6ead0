"""The ranked-responses format (``metareward.ranked``), read alike by EFT and the agreement evaluation."""

import json

import pytest

from metareward.eft import EXAMPLE_RANKED
from metareward.errors import InputError
from metareward.evaluation.known_order import known_order_set
from metareward.ranked import RankedPrompt, RankedResponse, load_ranked

GOOD = '{"id": "ok", "prompt": "p", "responses": [{"text": "a", "rank": 0}, {"text": "b", "rank": 1}]}'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{bad json", r"r.jsonl:2: invalid JSON"),
        ('{"prompt": "p", "responses": [{"text": "a", "rank": 0}]}', r"r.jsonl:2: field 'responses' must be a list of at least 2"),
        ('{"prompt": "", "responses": []}', r"r.jsonl:2: field 'prompt' must be a non-empty string"),
        ('{"prompt": "p", "responses": [{"text": "a", "rank": 0}, {"text": "b", "rank": -1}]}',
         r"r.jsonl:2: field 'responses\[1\].rank' must be an integer >= 0"),
        ('{"prompt": "p", "responses": [{"text": "a", "rank": 0}, {"text": "b", "rank": 1.5}]}',
         r"r.jsonl:2: field 'responses\[1\].rank' must be an integer >= 0"),
        ('{"prompt": "p", "responses": [{"text": "a", "rank": 0}, {"text": "b"}]}',
         r"r.jsonl:2: field 'responses\[1\]' must be an object with 'text' and 'rank'"),
        ('{"prompt": "p", "responses": [{"text": "a", "rank": 0}, {"text": "b", "rank": 1, "score": 3}]}',
         r"r.jsonl:2: field 'responses\[1\]' must be an object with 'text' and 'rank'"),
        ('{"prompt": "p", "responses": [{"text": "a", "rank": 0}, {"text": " ", "rank": 1}]}',
         r"r.jsonl:2: field 'responses\[1\].text' must be a non-empty string"),
        ('{"prompt": "p", "responses": [{"text": "a", "rank": 0}, {"text": "b", "rank": 1, "kind": 3}]}',
         r"r.jsonl:2: field 'responses\[1\].kind' must be a string"),
        ('{"prompt": "p", "responses": [{"text": "a", "rank": 1}, {"text": "b", "rank": 1}]}',
         r"r.jsonl:2: field 'responses': all ranks are equal"),
        ('{"prompt": "p", "answers": []}', r"r.jsonl:2: unknown field\(s\) \['answers'\]"),
        ('{"id": "x/y", "prompt": "p", "responses": []}', r"r.jsonl:2: field 'id' must be a non-empty string without '/'"),
        (GOOD, r"r.jsonl:2: duplicate id 'ok' \(first on line 1\)"),
    ],
)
def test_malformed_input_names_line_and_field(tmp_path, line, message):
    path = tmp_path / "r.jsonl"
    path.write_text(GOOD + "\n" + line + "\n")
    with pytest.raises(InputError, match=message):
        load_ranked(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="ranked-responses file not found"):
        load_ranked(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no ranked prompts"):
        load_ranked(tmp_path / "empty.jsonl")


def test_fields_defaults_and_views(tmp_path):
    rows = [
        {"prompt": "  Q1?  ", "responses": [{"text": "a", "rank": 0, "kind": "complete"}, {"text": "b", "rank": 2}],
         "meta": {"source": "oa"}},
        {"id": "q-two", "prompt": "Q2?", "responses": [{"text": "c", "rank": 1}, {"text": "d", "rank": 0}]},
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = load_ranked(path)
    assert first == RankedPrompt(
        "q000001", "Q1?", (RankedResponse("a", 0, "complete"), RankedResponse("b", 2, "")), {"source": "oa"}
    )
    assert second.id == "q-two" and second.texts == ["c", "d"] and second.ranks == [1, 0]


def test_the_shipped_files_follow_the_format(tmp_path):
    """The EFT example file loads, and the known-order set written out as JSONL loads back unchanged:
    one format for both readers."""
    assert [len(r.texts) for r in load_ranked(EXAMPLE_RANKED)] == [3, 3, 3]
    known = known_order_set()
    path = tmp_path / "known.jsonl"
    path.write_text("".join(
        json.dumps({"id": p.id, "prompt": p.prompt,
                    "responses": [{"text": r.text, "rank": r.rank, "kind": r.kind} for r in p.responses]}) + "\n"
        for p in known
    ))
    assert load_ranked(path) == known
