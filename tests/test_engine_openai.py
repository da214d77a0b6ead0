"""The OpenAI-compatible engine against a real local HTTP server serving the embedded model
(``openai_hf_server.py``: HFEngine behind the OpenAI chat API, started by the test on 127.0.0.1).

A judge stage runs through it with the chunked store the loop uses; fault tests inject 429/500 replies
through a proxy (the engine retries and the records equal a fault-free run, none duplicated) and kill
the server mid-stage (the rerun, against a live server, resumes and gives the same records). The API key is
checked to reach the server and to appear in no log, output or file. ``vllm serve`` as the server is
tested in ``test_engine_vllm.py`` (it takes minutes to start on CPU)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers import FaultProxy, free_port, stop, tiny_judge_requests, wait_ready

from metareward.config import EngineConfig
from metareward.engines import make_engine
from metareward.engines.base import ChoiceRequest
from metareward.engines.openai import EngineRequestError, OpenAIEngine, fold_seed, sub_seed
from metareward.errors import InputError
from metareward.models import resolve_model
from metareward.stages.chunks import run_chunked

pytestmark = pytest.mark.slow
SERVER = Path(__file__).parent / "openai_hf_server.py"
SECRET = "sk-test-7f3a9c1e5b2d4680-do-not-leak"


def start_server(model: str, port: int, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(SERVER), model, str(port), *flags], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, timeout=180)
    except Exception:
        stop(proc)
        raise
    return proc


@pytest.fixture(scope="module")
def model() -> str:
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="module")
def server(model):
    port = free_port()
    proc = start_server(model, port)
    yield f"http://127.0.0.1:{port}/v1"
    stop(proc)


def encode(out):
    return out.to_columns()  # the chunk log's form


@pytest.fixture(scope="module")
def reference(server, model, tmp_path_factory):
    """The judge stage's outputs through the server with no faults: what every other run must equal."""
    reqs, _ = tiny_judge_requests()
    eng = make_engine(EngineConfig(name="openai", base_url=server, max_concurrency=2), model)  # as the loop builds it
    assert isinstance(eng, OpenAIEngine) and eng.model == model and eng.tokenizer is not None
    out = run_chunked(tmp_path_factory.mktemp("ref") / "judge.chunks.jsonl", reqs, eng.generate, encode, 2, "ref")
    eng.close()
    return out


def test_judge_stage_through_server(reference):
    reqs, _ = tiny_judge_requests()
    assert list(reference) == [r.id for r in reqs]
    for r in reqs:
        out = reference[r.id]
        assert len(out["texts"]) == 2 and len(out["n_tokens"]) == 2 and len(out["finished"]) == 2
        assert all(1 <= n <= 11 for n in out["n_tokens"])  # max_tokens 10 (+ the stop token if it stopped)
        assert any(t for t in out["texts"])


def test_faults_429_500_are_retried_and_nothing_is_duplicated(server, model, reference, tmp_path, caplog, capsys,
                                                              monkeypatch):
    monkeypatch.setenv("METAREWARD_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)  # every logger, the HTTP client's included
    reqs, _ = tiny_judge_requests()
    with FaultProxy(server, every=2) as proxy:
        eng = OpenAIEngine(proxy.url, model, api_key_env="METAREWARD_TEST_KEY", max_concurrency=2,
                           max_retries=4, backoff_base=0.01, tokenizer_path=model)
        log_path = tmp_path / "judge.chunks.jsonl"
        out = run_chunked(log_path, reqs, eng.generate, encode, 2, "faults")
        eng.close()
    assert proxy.failures >= 2 and eng.retries == proxy.failures  # both 429 and 500 were injected and retried
    assert out == reference
    ids = [o["id"] for line in log_path.read_text().splitlines() for o in __import__("json").loads(line)["outputs"]]
    assert ids == [r.id for r in reqs]  # each record exactly once, in order
    # The key reached the server, and nowhere else.
    assert proxy.auth_headers == {f"Bearer {SECRET}"}
    captured = capsys.readouterr()
    assert SECRET not in caplog.text and SECRET not in captured.out and SECRET not in captured.err
    assert SECRET not in repr(eng)
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace")


def test_server_killed_mid_stage_then_rerun_resumes(server, model, reference, tmp_path):
    """A server dies in the second chunk: the stage fails; rerun against a live server (the module's: a
    restarted one would be the same weights behind another process), it resumes at that chunk."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    reqs, _ = tiny_judge_requests()
    log_path = tmp_path / "judge.chunks.jsonl"
    proc = start_server(model, port)
    chunks_called: list[list[str]] = []
    try:
        eng = OpenAIEngine(url, model, max_concurrency=2, max_retries=2, backoff_base=0.01, tokenizer_path=model)

        def call_and_kill(chunk):
            chunks_called.append([r.id for r in chunk])
            if len(chunks_called) == 2:  # the second chunk starts: the server dies
                stop(proc)
            return eng.generate(chunk)

        with pytest.raises(EngineRequestError, match="failed after 3 attempts"):
            run_chunked(log_path, reqs, call_and_kill, encode, 1, "killed")
        assert chunks_called == [["q0/r0"], ["q0/r1"]]
        eng.close()
    finally:
        stop(proc)

    eng = OpenAIEngine(server, model, max_concurrency=2, tokenizer_path=model)
    chunks_called.clear()

    def call(chunk):
        chunks_called.append([r.id for r in chunk])
        return eng.generate(chunk)

    out = run_chunked(log_path, reqs, call, encode, 1, "resumed")
    eng.close()
    assert chunks_called == [["q0/r1"], ["q1/r0"]]  # the finished chunk was not redone
    assert out == reference


def test_n_fans_out_when_the_server_rejects_it(server, model, tmp_path):
    with FaultProxy(server, every=0, refuse_n=True) as proxy:  # the module's server, refusing n > 1
        eng = OpenAIEngine(proxy.url, model, max_concurrency=2, tokenizer_path=model)
        reqs, _ = tiny_judge_requests(n=3, max_tokens=8)
        outs = {o.id: o for o in eng.generate(reqs[:2])}
        assert eng._n_supported is False
        assert sorted(outs) == ["q0/r0", "q0/r1"]
        for o in outs.values():
            assert len(o.samples) == 3
            assert len(set(o.texts)) > 1  # the fanned-out samples have different seeds
        # choice probabilities need logprobs, which this server refuses: a clear error
        with pytest.raises(InputError, match="free_text"):
            list(eng.choice_probs([ChoiceRequest("c", ({"role": "user", "content": "hi"},), "Score: ",
                                                 ("0", "1", "2", "3", "4", "5"))]))
        # a model the server does not serve
        with pytest.raises(InputError, match="serves"):
            OpenAIEngine(proxy.url, "some/other-model")
        eng.close()


def test_seeds():
    assert fold_seed(2**62 + 5) == 5
    assert sub_seed(7, 0) != sub_seed(7, 1)
    assert 0 <= sub_seed(2**62, 3) < 2**31


def test_managed_server_per_model(model, tmp_path):
    """``engine.server_command``: the engine starts a server for each model it is built on (the seed, then
    an iteration's model), generates through it, and stops it on close, freeing the port for the next."""
    port = free_port()
    command = f"env OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 {sys.executable} {SERVER} {{model}} {{port}}"
    cfg = EngineConfig(name="openai", base_url=f"http://127.0.0.1:{port}/v1", server_command=command,
                       server_start_timeout=180, max_concurrency=2)
    iteration_model = tmp_path / "iter_1" / "model"  # another model folder (the same weights, linked)
    iteration_model.mkdir(parents=True)
    for f in Path(model).iterdir():
        (iteration_model / f.name).symlink_to(f)
    reqs, _ = tiny_judge_requests(n=1, max_tokens=6)
    pids = []
    for path in (model, str(iteration_model)):
        eng = make_engine(cfg, path, log_dir=tmp_path)
        assert eng.model == path  # the server lists this model (checked at start), so it serves these weights
        outs = list(eng.generate(reqs))
        assert len(outs) == len(reqs) and all(o.texts[0] for o in outs)
        pids.append(eng.server.proc.pid)
        eng.close()
        assert eng.server.proc is None
    assert pids[0] != pids[1]
    log = (tmp_path / "server.log").read_text()
    assert log.count("starting:") == 2 and str(iteration_model) in log
