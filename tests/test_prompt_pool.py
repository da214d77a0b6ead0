"""Prompt pools: filters, import from JSONL/CSV/datasets, self-instruct generation (fake and real engine)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence

import pytest
from rouge_score import rouge_scorer

from metareward.engines.base import ChoiceRequest, Completion, Engine, GenerationOutput, GenerationRequest
from metareward.errors import InputError
from metareward.pool import load_prompt_pool
from metareward.prompt_pool import (
    DEFAULT_SEEDS,
    ImportSettings,
    PromptFilter,
    RougePool,
    SelfInstructSettings,
    generate_pool,
    import_prompts,
)
from metareward.prompt_pool.filters import FilterSettings, bad_format, banned_keyword
from metareward.prompt_pool.self_instruct import extract_task, pick_demos, render_prompt
from metareward.records import Prompt

# ----------------------------------------------------------------------------- filters


def test_banned_keywords_are_whole_words_any_case():
    assert banned_keyword("Draw a cat") == "draw"
    assert banned_keyword("Please GO TO the store") == "go to"
    assert banned_keyword("Summarise the attached files") == "files"
    assert banned_keyword("Describe a drawer and a mapping") is None  # not whole words
    assert banned_keyword("Explain plotting") is None


def test_bad_format():
    assert bad_format("") and bad_format("   ") and bad_format("- list item") and bad_format("¿Qué es?")
    assert not bad_format("3 reasons to learn Python") and not bad_format("Write a haiku.")


def test_rouge_pool_matches_rouge_score_package():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(0)
    words = ["write", "a", "poem", "about", "the", "sea", "ocean", "short", "story", "cat", "dog", "explain", "why", "sky", "is", "blue"]
    texts = [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(40)]
    for a in texts[:10]:
        for b in texts[10:]:
            pool = RougePool([a], threshold=0.0)
            assert pool.max_similarity(b) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure)


def test_rouge_threshold_is_strict_and_pool_grows():
    pool = RougePool(["write a poem about the sea"], threshold=0.7)
    # 5 of 6 tokens in common: F1 = 2*5/(6+6) = 0.833
    assert pool.is_near_duplicate("write a poem about the ocean")
    assert not pool.is_near_duplicate("explain how tides work on earth")
    pool.add("explain how tides work on earth")
    assert pool.is_near_duplicate("explain how tides work on mars")


def test_prompt_filter_reasons_in_order():
    f = PromptFilter(["Write a poem about the sea."], FilterSettings(min_words=3, max_words=10))
    assert f.offer("- bullet") == "format"
    assert f.offer("Hi there") == "length"
    assert f.offer("one two three four five six seven eight nine ten eleven") == "length"
    assert f.offer("Draw a picture of a cat.") == "keyword"
    assert f.offer("write a POEM about   the sea.") == "duplicate"
    assert f.offer("Write a poem about the ocean.") == "rouge"
    assert f.offer("Explain how vaccines train the immune system.") is None
    assert f.offer("Explain how vaccines train the immune system!") == "rouge"  # punctuation differs


# ----------------------------------------------------------------------------- import


def test_import_jsonl_dedup_length_and_ids(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [
        {"instruction": "What is the capital of France?"},
        {"instruction": "  what is the capital   of france?  "},  # duplicate after normalising
        {"instruction": "Hi"},  # too short
        {"instruction": "Name three prime numbers."},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    out = tmp_path / "pool.jsonl"
    report = import_prompts(src, out, ImportSettings(min_words=2))
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"id": "p000001", "prompt": "What is the capital of France?"},
        {"id": "p000002", "prompt": "Name three prime numbers."},
    ]
    assert (report.rows, report.kept, report.dropped) == (4, 2, {"length": 1, "duplicate": 1})
    assert json.loads((tmp_path / "pool.jsonl.report.json").read_text())["kept"] == 2
    assert [p.id for p in load_prompt_pool(out)] == ["p000001", "p000002"]


def test_import_jsonl_malformed_line_is_named(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "ok one here"}\n\n{"prompt": "ok two"\n')
    with pytest.raises(InputError, match=r"bad.jsonl:3: invalid JSON"):
        import_prompts(src, tmp_path / "o.jsonl")
    src.write_text('{"prompt": "ok one here"}\n{"question": "where is the prompt"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: no prompt column"):
        import_prompts(src, tmp_path / "o.jsonl")
    src.write_text('{"q": "fine"}\n{"q": 17}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: field 'q' must be text"):
        import_prompts(src, tmp_path / "o.jsonl", ImportSettings(column="q"))
    assert not (tmp_path / "o.jsonl").exists()


def test_import_csv_with_column_ids_and_multiline_cells(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text('key,question\nk1,"Explain recursion\nwith an example."\nk2,Why is the sky blue?\n')
    out = tmp_path / "pool.jsonl"
    import_prompts(src, out, ImportSettings(column="question", id_column="key"))
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"id": "k1", "prompt": "Explain recursion\nwith an example."},
        {"id": "k2", "prompt": "Why is the sky blue?"},
    ]


def test_import_csv_malformed_row_is_named(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text('prompt,id\n"Explain recursion\nplease",a\nWhy is the sky blue?,b,extra\n')
    with pytest.raises(InputError, match=r"in.csv:4: 3 fields, the header has 2"):
        import_prompts(src, tmp_path / "o.jsonl")
    src.write_text("text\nfine\n")
    with pytest.raises(InputError, match=r"in.csv:1: no column 'prompt'"):
        import_prompts(src, tmp_path / "o.jsonl", ImportSettings(column="prompt"))
    src.write_text("text,id\nfine,x\nalso fine,x\n")
    with pytest.raises(InputError, match=r"in.csv:3: duplicate id 'x' \(first at .*in.csv:2\)"):
        import_prompts(src, tmp_path / "o.jsonl", ImportSettings(id_column="id"))


def test_import_hf_dataset_folder_and_chat_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": "Tell me a joke about cats."}, {"role": "assistant", "content": "..."}],
                [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Define entropy."}],
            ]
        }
    )
    folder = tmp_path / "ds"
    ds.save_to_disk(str(folder))
    out = tmp_path / "pool.jsonl"
    report = import_prompts(folder, out, ImportSettings(column="messages"))
    assert report.kept == 2
    assert [p.text for p in load_prompt_pool(out)] == ["Tell me a joke about cats.", "Define entropy."]
    parquet = tmp_path / "d.parquet"
    datasets.Dataset.from_dict({"prompt": ["A b c?", "D e f?"]}).to_parquet(
        str(parquet)
    )
    import_prompts(parquet, out)
    assert [p.text for p in load_prompt_pool(out)] == ["A b c?", "D e f?"]


def test_import_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        import_prompts(tmp_path / "nope.jsonl", tmp_path / "o.jsonl")


# ----------------------------------------------------------------------------- seeds


def test_shipped_seeds_are_unique_single_line_and_pass_the_filters():
    seeds = load_prompt_pool(DEFAULT_SEEDS)
    assert len(seeds) == 290
    assert len({p.id for p in seeds}) == 290
    f = PromptFilter([])
    for p in seeds:
        assert "\n" not in p.text
        assert f.reject_reason(p.text) is None, p.text
        f.add(p.text)


# ----------------------------------------------------------------------------- self-instruct


def test_extract_task():
    assert extract_task("Task 9: Write a limerick about tea.\nTask 10: Other", False) == (
        "Write a limerick about tea.", True)
    assert extract_task("Task 1:\n\nExplain DNS.\n\nDNS is ...", True) == ("Explain DNS.", True)
    assert extract_task('1. "Name a bird."\n2. Name a fish.', False) == ("Name a bird.", True)
    assert extract_task("Write a very long task that was cut", False) == ("Write a very long task that was cut", False)
    assert extract_task("Write a task.", True) == ("Write a task.", True)


def test_pick_demos_six_seeds_two_generated_with_fallback():
    s = SelfInstructSettings()
    seeds = [f"s{i}" for i in range(20)]
    demos = pick_demos(seeds, [], s, random.Random(0))
    assert len(demos) == 8 and all(d.startswith("s") for d in demos) and len(set(demos)) == 8
    demos = pick_demos(seeds, ["g1"], s, random.Random(0))
    assert sorted(d[0] for d in demos) == ["g"] + ["s"] * 7
    demos = pick_demos(seeds, ["g1", "g2", "g3"], s, random.Random(0))
    assert sorted(d[0] for d in demos) == ["g", "g"] + ["s"] * 6
    text = render_prompt(demos)
    assert "Task 1: " in text and "Task 8: " in text and text.rstrip().endswith("Task 9:")


class ScriptedEngine(Engine):
    """Replies with scripted texts in request order; records requests; can crash after some calls."""

    name = "scripted"

    def __init__(self, replies: list[tuple[str, bool]], crash_after_calls: int | None = None):
        self.replies = list(replies)
        self.requests: list[GenerationRequest] = []
        self.calls = 0
        self.crash_after_calls = crash_after_calls

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutput]:
        if self.crash_after_calls is not None and self.calls >= self.crash_after_calls:
            raise RuntimeError("simulated crash")
        self.calls += 1
        outs = []
        for r in requests:
            self.requests.append(r)
            text, finished = self.replies.pop(0)
            outs.append(GenerationOutput(r.id, (Completion(text, len(text.split()), finished),)))
        yield from reversed(outs)

    def choice_probs(self, requests: Sequence[ChoiceRequest]):
        raise NotImplementedError


SEEDS = [Prompt(f"s{i}", t) for i, t in enumerate([
    "Write a poem about the sea.", "Explain how a bicycle works.", "List three uses of vinegar.",
    "Summarize the plot of Hamlet.", "Give tips for a job interview.", "Translate hello into French.",
    "Describe the water cycle.",
])]

REPLIES = [
    ("Task 9: Explain how vaccines train the immune system.\nTask 10: more", False),  # kept g1
    ("Write a poem about the ocean.", True),  # rouge vs seed
    ("Draw a map of Europe.", True),  # keyword
    ("Hi", True),  # length
    ("Describe the rules of chess for a beginner and give one opening", False),  # truncated
    ("explain how vaccines train the IMMUNE system.", True),  # duplicate of g1 (same round)
    ("Compare Python and Rust for systems programming.", True),  # kept g2
    ("Suggest a name for a bakery that sells only bread.", True),  # kept g3
    ("¿Qué es el amor y por qué?", True),  # format (not English)
]


def test_generate_pool_filters_reports_and_demo_mix(tmp_path):
    engine = ScriptedEngine(REPLIES + [("Name a fruit that is yellow and curved.", True)] * 3)
    s = SelfInstructSettings(n_prompts=4, requests_per_round=3, max_rounds=5, max_tokens=32)
    out = tmp_path / "pool.jsonl"
    report = generate_pool(out, engine, s, seeds=SEEDS)
    pool = load_prompt_pool(out)
    assert [(p.id, p.text) for p in pool] == [
        ("g000001", "Explain how vaccines train the immune system."),
        ("g000002", "Compare Python and Rust for systems programming."),
        ("g000003", "Suggest a name for a bakery that sells only bread."),
        ("g000004", "Name a fruit that is yellow and curved."),
    ]
    assert report["generated"] == 12 and report["kept"] == 4 and report["complete"] is True
    assert report["rounds"] == 4
    assert report["dropped"] == {"truncated": 1, "format": 1, "length": 1, "keyword": 1, "duplicate": 3,
                                 "rouge": 1}
    assert json.loads((tmp_path / "pool.jsonl.report.json").read_text())["dropped"] == report["dropped"]
    # sampling and the 6 + 2 demonstration mix
    r0 = engine.requests[0]
    assert (r0.sampling.temperature, r0.sampling.top_p, r0.sampling.max_tokens) == (0.6, 0.9, 32)
    seed_texts = {p.text for p in SEEDS}

    def demos(req):
        lines = [ln for ln in req.messages[0]["content"].splitlines() if ln.startswith("Task ") and ": " in ln]
        return [ln.split(": ", 1)[1] for ln in lines]

    assert all(d in seed_texts for d in demos(engine.requests[0])) and len(demos(engine.requests[0])) == 7
    # rounds 1 and 2 see the one prompt kept in round 0 (+ 7 seeds); round 3 sees three, uses two + 6 seeds
    assert sum(d not in seed_texts for d in demos(engine.requests[3])) == 1
    assert sum(d not in seed_texts for d in demos(engine.requests[6])) == 1
    later = demos(engine.requests[9])
    assert sum(d not in seed_texts for d in later) == 2 and len(later) == 8


def test_generate_pool_resumes_without_redoing_rounds(tmp_path):
    s = SelfInstructSettings(n_prompts=4, requests_per_round=3, max_rounds=5)
    replies = REPLIES + [("Name a fruit that is yellow and curved.", True)] * 3
    ref = tmp_path / "ref" / "pool.jsonl"
    generate_pool(ref, ScriptedEngine(replies), s, seeds=SEEDS)

    out = tmp_path / "run" / "pool.jsonl"
    crashing = ScriptedEngine(replies, crash_after_calls=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_pool(out, crashing, s, seeds=SEEDS)
    assert not out.exists()
    log = out.with_name("pool.jsonl.selfinstruct.log.jsonl")
    with log.open("a") as f:
        f.write('{"chunk": 2, "outp')  # a torn write from the kill
    rest = ScriptedEngine(replies[6:])
    report = generate_pool(out, rest, s, seeds=SEEDS)
    assert len(rest.requests) == 6  # rounds 0 and 1 were replayed from the log
    assert out.read_text() == ref.read_text()
    assert report["generated"] == 12
    # a finished run replays without an engine at all
    def no_engine():
        raise AssertionError("engine must not be created")

    assert generate_pool(out, no_engine, s, seeds=SEEDS)["kept"] == 4
    with pytest.raises(InputError, match="different settings"):
        generate_pool(out, no_engine, SelfInstructSettings(n_prompts=5, requests_per_round=3), seeds=SEEDS)


def test_generate_pool_stops_at_max_rounds(tmp_path):
    engine = ScriptedEngine([("Write a poem about the sea.", True)] * 4)
    report = generate_pool(tmp_path / "p.jsonl", engine,
                           SelfInstructSettings(n_prompts=3, requests_per_round=2, max_rounds=2), seeds=SEEDS)
    assert report["complete"] is False and report["kept"] == 0 and report["dropped"]["duplicate"] == 4


@pytest.mark.slow
def test_generate_small_pool_with_real_model(tmp_path):
    from metareward.engines.hf import HFEngine
    from metareward.models import resolve_model

    engine = HFEngine(resolve_model("smollm2-135m"), device="cpu", dtype="float32", batch_size=4, threads=1)
    # 40 tokens: at 20 every reply of this model is cut mid-sentence and dropped as truncated
    s = SelfInstructSettings(n_prompts=2, requests_per_round=3, max_rounds=1, max_tokens=40)
    out = tmp_path / "pool.jsonl"
    report = generate_pool(out, engine, s)
    assert report["generated"] == 3 and report["rounds"] == 1
    assert report["generated"] == report["kept"] + sum(report["dropped"].values())
    assert report["kept"] >= 1  # else nothing below is exercised
    pool = load_prompt_pool(out)
    assert len(pool) == min(report["kept"], 2)
    # every kept prompt is unique and passes every filter against the seeds and the others
    f = PromptFilter([p.text for p in load_prompt_pool(DEFAULT_SEEDS)])
    for p in pool:
        assert f.offer(p.text) is None, p.text
    # the log shows what each filter dropped, consistent with the report
    log = out.with_name("pool.jsonl.selfinstruct.log.jsonl")
    reasons = [c["reason"] for line in log.read_text().splitlines() for c in json.loads(line)["outputs"]]
    assert {r: reasons.count(r) for r in report["dropped"]} == report["dropped"]


# ----------------------------------------------------------------------------- command line


def test_cli_prompts_import_and_malformed_line(tmp_path, capsys):
    from metareward.cli import main

    src = tmp_path / "in.csv"
    src.write_text("prompt\nWhat is a monad?\nWhat is a monad?\nExplain tail calls.\n")
    out = tmp_path / "pool.jsonl"
    assert main(["prompts", "import", str(src), "--out", str(out)]) == 0
    assert "kept 2 of 3 rows" in capsys.readouterr().out
    assert [p.text for p in load_prompt_pool(out)] == ["What is a monad?", "Explain tail calls."]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": ["not", "text"]}\n')
    assert main(["prompts", "import", str(bad), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "bad.jsonl:2: field 'prompt' must be text" in capsys.readouterr().err


def test_cli_generate_rejects_bad_settings_before_loading_a_model(tmp_path, capsys):
    from metareward.cli import main

    assert main(["prompts", "generate", "--out", str(tmp_path / "p.jsonl"), "--top-p", "0"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
    assert main(["prompts", "generate", "--out", str(tmp_path / "p.jsonl"), "--model", "no such model"]) == 2
    assert "--model: unknown model" in capsys.readouterr().err
