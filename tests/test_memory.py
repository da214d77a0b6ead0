"""Resident memory: its readings, a stage's peak in the manifest, and engines that give their memory back.

* ``engines.memory`` parses /proc/self/status exactly and says None where it cannot read it;
* ``PeakMemory`` sees memory touched inside its block (and not what was freed before it);
* every stage of an iteration records its peak resident memory (stage entry and ``peak_rss_gib``);
* closing the hf engine empties its buffer pools, frees its model (no reference left anywhere) and
  returns the freed heap to the OS; the loop drops its engine and does the same before training.
"""

from __future__ import annotations

import gc
import json
import sys
import weakref
from pathlib import Path

import pytest
from fakes import FakeEngine
from test_loop import make_cfg, run

from metareward.engines import memory
from metareward.engines.memory import GIB, PeakMemory, release_freed_memory, reset_peak, resident_memory
from metareward.loop import Runner

LINUX = sys.platform.startswith("linux") and Path("/proc/self/status").exists()


def test_resident_memory_reads_vmrss_and_vmhwm_in_bytes(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 9999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nThreads:\t3\n")
    assert resident_memory(status) == {"rss": 1024 * 1024, "peak": 2048 * 1024}


def test_resident_memory_is_none_without_the_file_or_a_line(tmp_path):
    assert resident_memory(tmp_path / "missing") is None
    status = tmp_path / "status"
    status.write_text("VmRSS:\t 1024 kB\n")  # no VmHWM (e.g. a kernel without it)
    assert resident_memory(status) is None


def test_reset_peak_is_false_where_it_cannot_write(tmp_path):
    assert reset_peak(tmp_path / "no-such-dir" / "clear_refs") is False


def test_peak_memory_is_none_where_memory_cannot_be_read(monkeypatch):
    monkeypatch.setattr(memory, "resident_memory", lambda: None)
    with PeakMemory() as peak:
        pass
    assert peak.record()["peak_gib"] is None and peak.record()["end_gib"] is None


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/status")
def test_peak_memory_sees_memory_touched_inside_its_block():
    import mmap

    # An anonymous mapping, not a bytearray: once any HFEngine was built in this process glibc keeps freed
    # heap (keep_freed_memory, process-wide), so a 256 MiB bytearray could reuse heap another test freed
    # (no new resident page) or stay resident after del, and the test depended on what ran before it.
    size = 256 << 20
    with PeakMemory() as peak:
        block = mmap.mmap(-1, size)
        for offset in range(0, size, mmap.PAGESIZE):  # written, so every page is resident
            block[offset] = 1
        assert block[size - 1] == 0 and block[size - mmap.PAGESIZE] == 1
        block.close()  # unmapped: back to the OS
    assert peak.peak_gib is not None and peak.end_gib is not None
    assert peak.peak_gib >= peak.end_gib
    if peak.reset:  # the peak is this block's: it held the 256 MiB on top of what remains after it
        assert peak.peak_gib - peak.end_gib >= 0.9 * size / GIB


@pytest.mark.skipif(not LINUX, reason="glibc")
def test_release_freed_memory_runs_glibc_trim():
    assert release_freed_memory() is True


def test_every_stage_records_its_peak_resident_memory(tmp_path):
    cfg = make_cfg(tmp_path)
    run(cfg, FakeEngine())
    manifest = json.loads((Path(cfg.run_dir) / "iter_1" / "manifest.json").read_text())
    stages = {"prompts", "actor", "judge", "meta_judge", "pairs", "train"}
    assert set(manifest["peak_rss_gib"]) == stages
    for name in stages:
        record = manifest["stages"][name]["memory"]
        assert set(record) == {"peak_gib", "end_gib", "since_reset"}
        assert manifest["peak_rss_gib"][name] == record["peak_gib"]
        if LINUX:
            assert record["peak_gib"] > 0 and record["peak_gib"] >= record["end_gib"]


class ClosingEngine(FakeEngine):
    def __init__(self):
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_runner_drops_its_engine_and_releases_memory_before_training(tmp_path, monkeypatch):
    engines: list[ClosingEngine] = []
    calls = []  # (stages done so far, whether every engine was closed) at each release
    monkeypatch.setattr("metareward.loop.release_freed_memory",
                        lambda: calls.append((len(store_stages()), bool(engines) and all(e.closed for e in engines))))
    cfg = make_cfg(tmp_path)
    cfg.iterations = cfg.iterations[:1]
    manifest = Path(cfg.run_dir) / "iter_1" / "manifest.json"

    def store_stages():
        return json.loads(manifest.read_text())["stages"] if manifest.exists() else {}

    seen = {}

    class Probe(Runner):
        def train(self, model_path, train_set, store):
            seen["engine"], seen["calls"] = self._engine, list(calls)
            store.layout.model.mkdir(parents=True, exist_ok=True)
            return {"pairs": len(train_set)}

    Probe(cfg, engine_factory=lambda path: engines.append(ClosingEngine()) or engines[-1], echo=lambda s: None).run()
    assert seen["engine"] is None and [e.closed for e in engines] == [True]  # closed and dropped before training
    # one release at the end of each of the 5 stages before train (the engine still open), then one
    # once the engine was closed, before training; after training, one more and one as the train stage ends
    assert seen["calls"] == [(i, False) for i in range(5)] + [(5, True)]
    assert calls[len(seen["calls"]):] == [(5, True), (5, True)]


def tiny_engine():
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from metareward.engines.hf import HFEngine
    from metareward.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))
    return HFEngine("unused", device="cpu", dtype="float32", batch_size=8, model=model.eval(), tokenizer=tok,
                    decode_kernel=False)


def test_closing_the_hf_engine_releases_its_pools_and_its_model(monkeypatch):
    from metareward.engines.base import GenerationRequest, SamplingParams
    from metareward.engines.hf import engine as engine_module

    calls = []
    monkeypatch.setattr(engine_module, "release_freed_memory", lambda: calls.append("release"))
    engine = tiny_engine()
    sp = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=8)
    outs = list(engine.generate([GenerationRequest(id="a", messages=({"role": "user", "content": "Hi"},), sampling=sp,
                                                   n=3, seed=1)]))
    assert len(outs[0].texts) == 3
    pool = engine.row_buffers
    assert pool._flat  # the decoding loop kept row buffers and logit buffers for the next batch
    model = weakref.ref(engine.model)
    fused = weakref.ref(engine.fused)
    engine.close()
    gc.collect()
    assert pool._flat == {}
    assert model() is None and fused() is None  # nothing else holds the model or its fused weights
    assert calls == ["release"]
