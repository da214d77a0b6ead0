"""A full disk: free space checked before training writes, OS write errors as one line, no temporaries
left, and a rerun after space is freed that ends with an undisturbed run's records.

The full disk is real where a tmpfs can be mounted (root, as in the project's sandbox), else skipped; the
same sequence also runs everywhere with the filesystem's answers simulated (``free_bytes`` and an
``OSError(ENOSPC)`` raised by the writer)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEngine
from safetensors.numpy import save_file

from metareward import cli, files, loop
from metareward.config import IterationConfig, RunConfig, SFTConfig, TrainingConfig, dump_config
from metareward.files import (
    DiskError,
    disk_errno,
    disk_errors,
    format_bytes,
    is_temporary,
    remove_temporaries,
)
from metareward.layout import ARTIFACTS, RunLayout
from metareward.loop import Runner
from metareward.models import save_model_atomic
from metareward.runlock import run_lock
from metareward.training.space import parameter_count, training_peak_bytes, writes_checkpoints

PARAMS = 1_000_000  # the tiny starting model's parameters: a float32 save is 4,000,000 bytes
EXTRA = 1 << 20  # what a save writes beside the weights (the estimate leaves such small files out)


# ---------------------------------------------------------------- units


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1536, 4_000_000, 3 << 30)] == [
        "0 B", "1023 B", "1.5 KiB", "3.8 MiB", "3.0 GiB"]


class SafetensorError(Exception):
    """What safetensors raises on a full disk: no OSError, the errno only in the message."""


def test_disk_errno_finds_the_os_error_in_libraries_messages():
    assert disk_errno(OSError(errno.ENOSPC, "No space left on device")) == errno.ENOSPC
    assert disk_errno(OSError(errno.EDQUOT, "Disk quota exceeded")) == errno.EDQUOT
    assert disk_errno(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")) \
        == errno.ENOSPC
    assert disk_errno(RuntimeError("PytorchStreamWriter failed: Read-only file system")) == errno.EROFS
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("checkpoint failed") from inner
    except RuntimeError as outer:
        assert disk_errno(outer) == errno.ENOSPC
    assert disk_errno(FileNotFoundError(errno.ENOENT, "No such file")) is None
    assert disk_errno(ValueError("a bad value, os error 2")) is None


def test_disk_errors_turns_only_filesystem_failures_into_one_line(tmp_path):
    (tmp_path / "model.tmp77").mkdir()
    with pytest.raises(DiskError) as e, disk_errors(tmp_path / "model", "saving the model", sweep=tmp_path):
        raise SafetensorError("I/O error: No space left on device (os error 28)")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'model'}: saving the model failed: No space left on device (")
    assert message.endswith(" free there). Free space or fix the filesystem, then rerun the same command to resume")
    assert not (tmp_path / "model.tmp77").exists()  # swept on the failure path
    with pytest.raises(KeyError), disk_errors(tmp_path, "x"):
        raise KeyError("not the disk's")


def test_temporaries_are_recognised_and_swept(tmp_path):
    names = {"responses.jsonl.tmp": True, "model.tmp4242": True, "tmp-checkpoint-40": True,
             "checkpoint-40": False, "model": False, "notes.tmpl": False, "a.tmp.jsonl": False}
    assert {n: is_temporary(Path(n)) for n in names} == names
    layout = RunLayout(tmp_path / "run")
    it = layout.iteration(1)
    left = [it.dir / "responses.jsonl.tmp", it.dir / "model.tmp4242" / "model.safetensors",
            it.train_work("dpo") / "tmp-checkpoint-40" / "optimizer.pt", layout.root / "config.yaml.tmp"]
    kept = [it.dir / "responses.jsonl", it.train_work("dpo") / "checkpoint-20" / "optimizer.pt", it.model / "x"]
    for path in left + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    with run_lock(layout) as handle:  # taking the lock sweeps: nothing else can be mid-write
        assert handle.swept == (layout.root / "config.yaml.tmp", it.train_work("dpo") / "tmp-checkpoint-40",
                                it.dir / "model.tmp4242", it.dir / "responses.jsonl.tmp")
    assert all(p.exists() for p in kept) and not any(p.exists() for p in left)
    assert remove_temporaries(layout.root) == []


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "judgments.jsonl"
    files.atomic_write_text(path, "old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(DiskError, match=rf"^{path}: writing failed: No space left on device \("):
        files.atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["judgments.jsonl"]


def tiny_model(folder: Path) -> Path:
    """A starting model folder: config.json and a safetensors file of PARAMS float32 parameters."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    save_file({"embed": np.zeros((1000, 600), np.float32), "head": np.zeros((400, 1000), np.float32)},
              str(folder / "model.safetensors"))
    return folder


def test_parameter_count_reads_the_safetensors_headers(tmp_path):
    assert parameter_count(tiny_model(tmp_path / "m")) == PARAMS
    assert parameter_count(tmp_path / "nowhere") is None
    assert parameter_count("HuggingFaceTB/SmolLM2-135M-Instruct") is None


def test_training_peak_bytes():
    p = 1000
    assert training_peak_bytes(p, bf16=False, lora=False, checkpoints=False) == 4000
    assert training_peak_bytes(p, bf16=True, lora=False, checkpoints=False) == 2000
    assert training_peak_bytes(p, bf16=True, lora=True, checkpoints=True) == 2000  # adapters left out
    assert training_peak_bytes(p, bf16=True, lora=False, checkpoints=True) == 2 * (2000 + 8000)
    assert training_peak_bytes(p, bf16=False, lora=False, checkpoints=True) == 2 * (4000 + 8000)


def test_writes_checkpoints():
    cfg = TrainingConfig(batch_size=2, gradient_accumulation=2, epochs=1.0, save_steps=10)
    assert not writes_checkpoints(cfg, 36) and writes_checkpoints(cfg, 37)  # 37 pairs: 10 steps (the last partial)
    cfg.backend = "native"
    assert not writes_checkpoints(cfg, 400)
    assert not writes_checkpoints(TrainingConfig(save_steps=0), 10_000)
    assert writes_checkpoints(SFTConfig(max_steps=5, save_steps=5), 0)


# ---------------------------------------------------------------- through the real loop


class Bytes:
    """A 'model' whose save writes ``size`` bytes of weights (and EXTRA of tokenizer) for real."""

    def __init__(self, size: int, name: str):
        self.size, self.name = size, name

    def save_pretrained(self, folder, **kwargs):
        with open(Path(folder) / self.name, "wb") as f:
            for start in range(0, self.size, 1 << 20):
                f.write(b"\0" * min(1 << 20, self.size - start))
            f.flush()
            os.fsync(f.fileno())


class SavingRunner(Runner):
    """DPO faked (tested elsewhere), the save real: ``save_model_atomic`` of as many bytes as the real
    float32 model would take, plus the small files the estimate leaves out."""

    def train(self, model_path, train_set, store):
        model = Bytes(PARAMS * 4, "model.safetensors")
        model.config = type("Config", (), {"quantization_config": None})()
        save_model_atomic(model, Bytes(EXTRA, "tokenizer.json"), store.layout.model)
        return {"pairs": len(train_set)}


def make_cfg(tmp_path: Path, run_dir: Path) -> RunConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"Question number {i}?" for i in range(12)) + "\n")
    cfg = RunConfig(run_dir=str(run_dir), prompts=str(prompts), model=str(tiny_model(tmp_path / "start")))
    cfg.actor.k, cfg.judge.n = 4, 4
    cfg.engine.chunk_size = 3
    cfg.training.precision = "float32"
    cfg.iterations = [IterationConfig(prompts=5, rho=0.0, train_judge=True)]
    return cfg


def records(run_dir: str) -> dict[str, str]:
    layout = RunLayout(run_dir)
    return {f"{i}/{n}": layout.iteration(i).artifact(n).read_text() for i in layout.iterations() for n in ARTIFACTS}


def run(cfg: RunConfig) -> None:
    SavingRunner(cfg, engine_factory=lambda path: FakeEngine(), echo=lambda s: None).run()


def temporaries(run_dir: str) -> list[str]:
    return [str(Path(d, n)) for d, dirs, fs in os.walk(run_dir) for n in dirs + fs if is_temporary(Path(n))]


def full_disk_then_freed(tmp_path: Path, run_dir: Path, fill, free_all) -> list[str]:
    """The issue's sequence: too little space for the model (stopped before training), then space that
    passes the check but not the save (the OS error), then space freed: the rerun's records equal an
    undisturbed run's, and no temporary is ever left. Returns the two errors' messages, in order."""
    ref = make_cfg(tmp_path / "ref", tmp_path / "ref" / "run")
    run(ref)
    cfg = make_cfg(tmp_path / "full", run_dir)
    model = RunLayout(run_dir).iteration(1).model
    fill(PARAMS * 4 - (1 << 20))  # 1 MiB short of the model's weights
    with pytest.raises(DiskError) as e:
        run(cfg)
    messages = [str(e.value)]
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"{model}: DPO (1M parameters: model save) needs about 3.8 MiB but only ")
    assert temporaries(run_dir) == [] and not model.exists()
    fill(PARAMS * 4 + EXTRA // 2)  # the weights fit, the tokenizer does not: the OS refuses mid-save
    with pytest.raises(DiskError, match=rf"^{model}: saving the model failed: No space left on device \(") as e:
        run(cfg)
    messages.append(str(e.value))
    assert "\n" not in str(e.value)
    assert temporaries(run_dir) == [] and not model.exists()
    free_all()
    run(cfg)
    assert records(cfg.run_dir) == records(ref.run_dir)
    assert temporaries(run_dir) == [] and (model / "model.safetensors").stat().st_size == PARAMS * 4
    return messages


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); test_full_disk_simulated covers the sequence")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_on_a_real_small_filesystem(tmp_path, small_tmpfs):
    ballast = small_tmpfs / "ballast"

    def fill(free: int) -> None:  # leave about ``free`` bytes free on the tmpfs, whatever the run wrote
        ballast.unlink(missing_ok=True)
        size = files.free_bytes(small_tmpfs) - free
        with open(ballast, "wb") as f:
            f.truncate(0)
            for start in range(0, size, 1 << 20):
                f.write(b"\1" * min(1 << 20, size - start))

    before_training, mid_save = full_disk_then_freed(tmp_path, small_tmpfs / "run", fill, lambda: ballast.unlink())
    assert "needs about 3.8 MiB" in before_training
    assert "No space left on device" in mid_save  # the real filesystem's own ENOSPC, not a simulated one
    assert not ballast.exists()


def test_full_disk_simulated(tmp_path, monkeypatch):
    state = {"free": None}
    real_free = files.free_bytes
    monkeypatch.setattr(files, "free_bytes", lambda path: state["free"] or real_free(path))
    real_write = Bytes.save_pretrained

    def write_within(self, folder, **kwargs):
        written = sum(p.stat().st_size for p in Path(folder).iterdir())
        if state["free"] is not None and written + self.size > state["free"]:
            (Path(folder) / self.name).write_bytes(b"\0" * 100)  # the OS takes some bytes, then refuses
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, folder, **kwargs)

    monkeypatch.setattr(Bytes, "save_pretrained", write_within)
    before_training, mid_save = full_disk_then_freed(tmp_path, tmp_path / "run", lambda free: state.update(free=free),
                                                     lambda: state.update(free=None))
    assert "needs about 3.8 MiB" in before_training
    assert "saving the model failed: No space left on device" in mid_save
    assert state["free"] is None


def test_the_cli_prints_a_full_disk_as_one_line(tmp_path, monkeypatch, capsys):
    cfg = make_cfg(tmp_path, tmp_path / "run")
    dump_config(cfg, tmp_path / "cfg.yaml")
    monkeypatch.setattr("metareward.engines.make_engine", lambda *a, **k: FakeEngine())
    monkeypatch.setattr(loop.Runner, "train", SavingRunner.train)
    monkeypatch.setattr(files, "free_bytes", lambda path: 1000)

    def no_plan(*args):  # the plan printed before a run (tested in its own module) needs a real model's config
        raise ValueError("no plan for a stand-in model")

    monkeypatch.setattr("metareward.plan.make_plan", no_plan)
    assert cli.main(["run", str(tmp_path / "cfg.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    model = RunLayout(cfg.run_dir).iteration(1).model
    assert not any("Traceback" in line for line in err)  # the progress bars above it, then one line
    assert err[-1] == (f"metareward: error: {model}: DPO (1M parameters: model save) needs about 3.8 MiB but only "
                   "1000 B is free there; free space (or use a run_dir on a larger disk) and rerun the same "
                   "command to resume")


class SafetensorsModel:
    """Saves its weights through safetensors itself, whose full-disk error is no OSError."""

    config = type("Config", (), {"quantization_config": None})()

    def save_pretrained(self, folder, **kwargs):
        save_file({"w": np.ones((1 << 20,), np.float32)}, str(Path(folder) / "model.safetensors"))


def test_a_safetensors_save_on_a_full_tmpfs_is_one_line_and_leaves_nothing(small_tmpfs):
    with open(small_tmpfs / "ballast", "wb") as f:  # leave 1 MiB of the 24 free: the 4 MiB save cannot fit
        f.write(b"\1" * (files.free_bytes(small_tmpfs) - (1 << 20)))
    out = small_tmpfs / "iter_1" / "model"
    out.parent.mkdir()
    with pytest.raises(DiskError) as e:
        save_model_atomic(SafetensorsModel(), Bytes(0, "tokenizer.json"), out)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"{out}: saving the model failed: No space left on device (")
    assert isinstance(e.value.__cause__, Exception) and "os error 28" in str(e.value.__cause__)
    assert os.listdir(out.parent) == []


def test_a_chunk_log_on_a_full_tmpfs_fails_in_one_line_and_resumes(small_tmpfs):
    from metareward.stages.chunks import ChunkLog

    path = small_tmpfs / "actor-abc.chunks.jsonl"
    log = ChunkLog(path)
    log.append(0, [{"id": "q0", "texts": ["short"]}])
    first = path.read_bytes()
    with open(small_tmpfs / "ballast", "wb") as f:
        f.write(b"\1" * (files.free_bytes(small_tmpfs) - 4096))
    with pytest.raises(DiskError, match=rf"^{path}: logging a finished chunk failed: No space left on device"):
        log.append(1, [{"id": "q1", "texts": ["x" * (1 << 20)]}])
    (small_tmpfs / "ballast").unlink()
    again = ChunkLog(path)  # the torn line of chunk 1 is cut off; chunk 0 stays
    assert list(again.done) == [0] and path.read_bytes() == first


@pytest.mark.slow  # loads the embedded model
def test_saving_the_real_model_on_a_full_tmpfs_is_one_line_and_leaves_nothing(small_tmpfs):
    """The issue's case: DPO's save of SmolLM2 (about 513 MiB) on a small filesystem: no traceback, no
    ``model.tmp<pid>``, and the check before training would have said so first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metareward.models import resolve_model
    from metareward.training.space import check_training_space

    path = resolve_model("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    out = small_tmpfs / "iter_1" / "model"
    with pytest.raises(DiskError, match=rf"^{out}: DPO \(135M parameters: model save\) needs about 513.1 MiB but"):
        check_training_space(path, out, out.parent / "work", "float32", lora=False, checkpoints=False, what="DPO")
    out.parent.mkdir()
    with pytest.raises(DiskError) as e:
        save_model_atomic(model, tokenizer, out)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"{out}: saving the model failed: No space left on device (")
    assert os.listdir(out.parent) == []
