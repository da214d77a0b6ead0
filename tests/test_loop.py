"""The run loop with a fake engine: artifacts, resume after a crash, settings changes, modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import Crash, FakeEngine

from metareward.config import IterationConfig, RunConfig
from metareward.errors import InputError
from metareward.loop import STAGES, Output, Runner, Stage
from metareward.records import Judgment, MetaJudgment, PreferencePair, Prompt, Response, read_jsonl
from metareward.stages.chunks import ChunkedPasses

ARTIFACTS = ["prompts.jsonl", "responses.jsonl", "judgments.jsonl", "meta_judgments.jsonl",
             "actor_pairs.jsonl", "judge_pairs.jsonl", "manifest.json"]


class FakeTrainRunner(Runner):
    """Skips real DPO (tested end to end elsewhere): 'trains' by writing the pair ids."""

    def train(self, model_path, train_set, store):
        store.layout.model.mkdir(parents=True, exist_ok=True)
        (store.layout.model / "pairs.json").write_text(json.dumps([p.id for p in train_set]))
        return {"pairs": len(train_set)}


def make_cfg(tmp_path: Path, **kw) -> RunConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"Question number {i}?" for i in range(12)) + "\n")
    cfg = RunConfig(run_dir=str(tmp_path / "run"), prompts=str(prompts), **kw)
    cfg.actor.k, cfg.judge.n = 4, 4
    cfg.engine.chunk_size = 3
    cfg.iterations = [IterationConfig(prompts=5, rho=0.0, train_judge=True),
                      IterationConfig(prompts=5, rho=0.32, train_judge=True)]
    return cfg


def records(run_dir: Path) -> dict[str, list[str]]:
    out = {}
    for it in sorted(run_dir.glob("iter_*")):
        for name in ARTIFACTS[:-1]:
            out[f"{it.name}/{name}"] = (it / name).read_text().splitlines()
    return out


def run(cfg, engine):
    return FakeTrainRunner(cfg, engine_factory=lambda path: engine, echo=lambda s: None).run()


@pytest.mark.parametrize("scoring", ["free_text", "constrained"])
def test_full_run_writes_every_artifact(tmp_path, scoring):
    cfg = make_cfg(tmp_path)
    cfg.judge.scoring = cfg.meta_judge.scoring = scoring
    summaries = run(cfg, FakeEngine())
    run_dir = Path(cfg.run_dir)
    assert (run_dir / "config.yaml").is_file()
    for i in (1, 2):
        for name in ARTIFACTS:
            assert (run_dir / f"iter_{i}" / name).is_file(), name
        assert not (run_dir / f"iter_{i}" / ".work").exists()
    it1 = run_dir / "iter_1"
    responses = read_jsonl(it1 / "responses.jsonl", Response)
    judgments = read_jsonl(it1 / "judgments.jsonl", Judgment)
    metas = read_jsonl(it1 / "meta_judgments.jsonl", MetaJudgment)
    pairs = read_jsonl(it1 / "actor_pairs.jsonl", PreferencePair) + read_jsonl(it1 / "judge_pairs.jsonl", PreferencePair)
    # fake actor: sample 2 of every prompt is a duplicate candidate only if identical text; ids are stable
    assert len({r.id for r in responses}) == len(responses)
    assert len(judgments) == len(responses) * 4
    assert {p.kind for p in pairs} == {"actor", "judge"}
    assert metas and all(m.result in (-1, 0, 1) for m in metas)
    # both orders of each pair are present
    orders = {(m.judgment_a, m.judgment_b) for m in metas}
    assert all((b, a) in orders for a, b in orders)
    if scoring == "constrained":
        assert all(j.score is not None and j.score_probs for j in judgments)
        assert all(j.text.rstrip()[-1] in "012345" for j in judgments)
    else:
        assert any(j.score is None for j in judgments)  # fake writes no score 1 time in 7
    manifest = json.loads((it1 / "manifest.json").read_text())
    assert manifest["summary"]["judgments"] == len(judgments)
    assert set(manifest["timings_s"]) == {"prompts", "actor", "judge", "meta_judge", "pairs", "train"}
    assert summaries[0]["actor_pairs"] == manifest["stages"]["pairs"]["actor_pairs"]
    # iteration 2 starts from iteration 1's model and draws different prompts
    m2 = json.loads((run_dir / "iter_2" / "manifest.json").read_text())
    assert m2["model_in"] == str(it1 / "model")
    p1 = {json.loads(x)["id"] for x in (it1 / "prompts.jsonl").read_text().splitlines()}
    p2 = {json.loads(x)["id"] for x in (run_dir / "iter_2" / "prompts.jsonl").read_text().splitlines()}
    assert len(p1) == len(p2) == 5 and not p1 & p2


def make_scored_cfg(path: Path, scoring: str) -> RunConfig:
    cfg = make_cfg(path)
    cfg.judge.scoring = cfg.meta_judge.scoring = scoring
    return cfg


# The fake engine emits one output per request, so a crash point is a position in the run's passes.
# With make_cfg, free_text crashes in the actor, judge, meta-judge (iteration 1), actor, meta-judge (2);
# constrained in the judge's score pass, meta-judge, verdict pass (iteration 1), score pass, verdict pass (2).
@pytest.mark.parametrize("scoring, crash_after", [("free_text", n) for n in (2, 7, 30, 75, 130)]
                         + [("constrained", n) for n in (60, 130, 200, 300, 420)])
def test_crash_anywhere_then_resume_gives_identical_records(tmp_path, scoring, crash_after):
    ref_cfg = make_scored_cfg(tmp_path / "ref", scoring)
    run(ref_cfg, FakeEngine())
    cfg = make_scored_cfg(tmp_path / "crash", scoring)
    with pytest.raises(Crash):
        run(cfg, FakeEngine(fail_after=crash_after))
    second = FakeEngine()
    run(cfg, second)
    assert records(Path(cfg.run_dir)) == records(Path(ref_cfg.run_dir))
    total = FakeEngine()
    run(make_scored_cfg(tmp_path / "count", scoring), total)
    # the rerun redid at most the one chunk that was in flight (chunk_size = 3)
    redone = second.emitted - (total.emitted - crash_after)
    assert 0 <= redone < cfg.engine.chunk_size
    # a third run does nothing at all
    third = FakeEngine()
    run(cfg, third)
    assert third.emitted == 0


def test_torn_chunk_log_line_is_repaired(tmp_path):
    cfg = make_cfg(tmp_path)
    with pytest.raises(Crash):
        run(cfg, FakeEngine(fail_after=40))
    logs = list(Path(cfg.run_dir).glob("iter_1/.work/*.chunks.jsonl"))
    assert logs
    with logs[0].open("a") as f:
        f.write('{"chunk": 99, "outputs": [{"id": "tor')  # a kill in the middle of a write
    run(cfg, FakeEngine())
    ref = make_cfg(tmp_path / "ref")
    run(ref, FakeEngine())
    assert records(Path(cfg.run_dir)) == records(Path(ref.run_dir))


def test_changed_settings_of_a_finished_stage_is_refused(tmp_path):
    cfg = make_cfg(tmp_path)
    run(cfg, FakeEngine())
    saved = (Path(cfg.run_dir) / "config.yaml").read_text()
    cfg.judge.n = 5
    with pytest.raises(InputError, match="stage 'judge' already ran with different settings"):
        run(cfg, FakeEngine())
    # the message points at config.yaml to restore the settings: the refused run must not have replaced it
    assert (Path(cfg.run_dir) / "config.yaml").read_text() == saved


def test_adding_an_iteration_reuses_finished_ones(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.iterations = cfg.iterations[:1]
    run(cfg, FakeEngine())
    cfg.iterations.append(IterationConfig(prompts=5, rho=0.32))
    engine = FakeEngine()
    run(cfg, engine)
    assert engine.calls and (Path(cfg.run_dir) / "iter_2" / "manifest.json").is_file()
    once = make_cfg(tmp_path / "once")
    run(once, FakeEngine())
    assert records(Path(cfg.run_dir)) == records(Path(once.run_dir))


def test_self_rewarding_mode_has_no_meta_judge(tmp_path):
    cfg = make_cfg(tmp_path, mode="self-rewarding")
    run(cfg, FakeEngine())
    for i in (1, 2):
        d = Path(cfg.run_dir) / f"iter_{i}"
        assert not (d / "meta_judgments.jsonl").exists()
        assert (d / "judge_pairs.jsonl").read_text() == ""
        assert (d / "actor_pairs.jsonl").read_text()
        assert "meta_judge" not in json.loads((d / "manifest.json").read_text())["stages"]


def test_iteration_without_judge_training(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.iterations[1].train_judge = False
    run(cfg, FakeEngine())
    assert (Path(cfg.run_dir) / "iter_1" / "judge_pairs.jsonl").read_text()
    assert (Path(cfg.run_dir) / "iter_2" / "judge_pairs.jsonl").read_text() == ""


def test_preflight_errors_before_any_model(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.iterations[0].prompts = 100
    factory_called = []
    runner = Runner(cfg, engine_factory=lambda p: factory_called.append(p), echo=lambda s: None)
    with pytest.raises(InputError, match="need 105 prompts"):
        runner.run()
    cfg = make_cfg(tmp_path)
    cfg.model = "no-such-model"
    with pytest.raises(InputError, match="unknown model 'no-such-model'"):
        Runner(cfg, engine_factory=lambda p: factory_called.append(p)).run()
    cfg = make_cfg(tmp_path)
    cfg.prompts = str(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="missing.jsonl: prompts file not found"):
        Runner(cfg, engine_factory=lambda p: factory_called.append(p)).run()
    assert factory_called == []


def test_sft_step_zero_feeds_iteration_one(tmp_path, monkeypatch):
    import metareward.training.sft as sft_module
    from metareward.training.sft import SFTConfig

    data = tmp_path / "eft.jsonl"
    data.write_text('{"prompt": "judge this", "completion": "Fine.\\nScore: 4"}\n')
    calls = []

    def fake_run_sft(model_path, data_path, out_dir, cfg, work_dir=None, threads=0):
        calls.append((model_path, data_path))
        Path(out_dir).mkdir(parents=True)
        return {"examples": 1}

    monkeypatch.setattr(sft_module, "run_sft", fake_run_sft)
    cfg = make_cfg(tmp_path)
    cfg.sft = SFTConfig(data=str(data))
    run(cfg, FakeEngine())
    run(cfg, FakeEngine())  # resumed: SFT is not redone
    assert len(calls) == 1 and calls[0][1] == str(data)
    m1 = json.loads((Path(cfg.run_dir) / "iter_1" / "manifest.json").read_text())
    assert m1["model_in"] == str(Path(cfg.run_dir) / "iter_0" / "model")
    cfg.sft = SFTConfig(data=str(tmp_path / "missing.jsonl"))
    with pytest.raises(InputError, match="sft.data: file not found"):
        run(cfg, FakeEngine())


# Stage settings hashes of one iteration (make_cfg, five given prompts, model "seed-model"), computed by
# the loop of commit 66e5b09, before it ran stages as Stage objects and before training.report_to existed.
# A finished stage whose hash changes is refused on resume, so these values keep run directories resumable.
PINNED_HASHES = {
    "free_text": {"prompts": "a1fa0de09acced17", "actor": "cfdf522d51541025", "judge": "f086e3e90b856ad0",
                  "meta_judge": "3832537a0de4aefc", "pairs": "48c5a40891aa8cd2", "train": "36542a1a3312a2ec"},
    "constrained": {"prompts": "a1fa0de09acced17", "actor": "cfdf522d51541025", "judge": "ebdd6facdb9896a5",
                    "meta_judge": "f604f96b4320a239", "pairs": "60c7e72c0c3b3fea", "train": "bebe84cb0f1f73ac"},
}


@pytest.mark.parametrize("scoring", ["free_text", "constrained"])
def test_stage_settings_hashes_are_unchanged(tmp_path, scoring):
    cfg = make_scored_cfg(tmp_path, scoring)
    cfg.meta_judge.bt_l2 = 1e-3  # the default then (a changed default rightly changes the hash)
    cfg.training.report_to = ["tensorboard"]  # logging only: not hashed
    runner = FakeTrainRunner(cfg, engine_factory=lambda path: FakeEngine(), echo=lambda s: None)
    runner.run_iteration(1, [Prompt(f"q{k}", f"Question number {k}?") for k in range(5)], "seed-model")
    stages = json.loads((Path(cfg.run_dir) / "iter_1" / "manifest.json").read_text())["stages"]
    got = {name: entry["settings"] for name, entry in stages.items()}
    assert got == PINNED_HASHES[scoring], "a stage's settings hash changed: existing run directories would refuse to resume"
    assert [s.name for s in STAGES] == list(got)


def test_an_added_stage_is_one_entry(tmp_path):
    calls = []

    def run_lengths(it, passes):
        calls.append(it.index)
        return Output(count=len(it.responses), extra={"chars": sum(len(r.text) for r in it.responses)})

    lengths = Stage("lengths", lambda it: ("v1",), run_lengths, load=lambda it: None,
                    applies=lambda it: it.index == 1)

    class LengthsRunner(FakeTrainRunner):
        stages = (*STAGES, lengths)

    cfg = make_cfg(tmp_path)
    LengthsRunner(cfg, engine_factory=lambda path: FakeEngine(), echo=lambda s: None).run()
    m1 = json.loads((Path(cfg.run_dir) / "iter_1" / "manifest.json").read_text())
    responses = read_jsonl(Path(cfg.run_dir) / "iter_1" / "responses.jsonl", Response)
    assert calls == [1] and m1["stages"]["lengths"]["count"] == len(responses)
    assert m1["stages"]["lengths"]["chars"] == sum(len(r.text) for r in responses)
    assert "lengths" in m1["timings_s"]
    assert "lengths" not in json.loads((Path(cfg.run_dir) / "iter_2" / "manifest.json").read_text())["stages"]
    # the stages before it keep their hashes: the same records as a run without it
    plain = make_cfg(tmp_path / "plain")
    run(plain, FakeEngine())
    assert records(Path(cfg.run_dir)) == records(Path(plain.run_dir))
    # done means done; changed settings are refused like any stage's
    LengthsRunner(cfg, engine_factory=lambda path: FakeEngine(), echo=lambda s: None).run()
    assert calls == [1]
    changed = Stage("lengths", lambda it: ("v2",), run_lengths, load=lambda it: None)

    class ChangedRunner(FakeTrainRunner):
        stages = (*STAGES, changed)

    with pytest.raises(InputError, match="stage 'lengths' already ran with different settings"):
        ChangedRunner(cfg, engine_factory=lambda path: FakeEngine(), echo=lambda s: None).run()


def test_chunked_passes_log_count_and_build_the_engine_only_when_needed(tmp_path):
    from metareward.config import JudgeConfig
    from metareward.stages import judge

    built = []

    def engine():
        built.append(1)
        return FakeEngine()

    prompts = {"p": Prompt("p", "Q?")}
    responses = [Response(f"p/r{k}", "p", k, f"answer {k}") for k in range(5)]
    cfg = JudgeConfig(n=2, scoring="constrained")

    def passes():
        return ChunkedPasses(engine, lambda name: tmp_path / f"{name}.log", chunk_size=2, choice_chunk_size=4)

    first = passes()
    js = judge.run(prompts, responses, cfg, 0, 1, first)
    assert len(built) >= 1 and [p.name for p in first.logs] == ["judge.log", "judge_score.log"]
    assert first.generated_tokens == sum(j.n_tokens for j in js)
    chunks = [json.loads(line)["chunk"] for line in (tmp_path / "judge_score.log").read_text().splitlines()]
    assert chunks == [0, 1, 2]  # 10 choice requests in chunks of 4
    chunks = [len(json.loads(line)["outputs"]) for line in (tmp_path / "judge.log").read_text().splitlines()]
    assert chunks == [1] * 5  # 5 requests of n = 2 samples, in chunks of at most 2 sequences
    built.clear()
    again = passes()
    assert judge.run(prompts, responses, cfg, 0, 1, again) == js
    assert built == [] and again.generated_tokens == first.generated_tokens  # everything was logged
    again.remove_logs()
    assert not list(tmp_path.iterdir())


def test_each_artifact_is_declared_by_one_stage_and_written_as_declared(tmp_path):
    from metareward.layout import ARTIFACTS

    declared = [name for stage in STAGES for name in stage.artifacts]
    assert sorted(declared) == sorted(ARTIFACTS)  # every artifact, each by exactly one stage

    def run_extra(it, passes):
        return Output({"judgments": []})  # not what the stage declares

    class WrongRunner(FakeTrainRunner):
        stages = (*STAGES[:2], Stage("extra", lambda it: ("v1",), run_extra, ("judge_pairs",)))

    cfg = make_cfg(tmp_path)
    with pytest.raises(RuntimeError, match=r"stage extra produced \['judgments'\], declared \['judge_pairs'\]"):
        WrongRunner(cfg, engine_factory=lambda path: FakeEngine(), echo=lambda s: None).run()
    it1 = Path(cfg.run_dir) / "iter_1"
    assert "extra" not in json.loads((it1 / "manifest.json").read_text())["stages"]  # not marked done
    assert not (it1 / "judge_pairs.jsonl").exists() and (it1 / "responses.jsonl").is_file()
