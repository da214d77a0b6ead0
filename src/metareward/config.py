"""The run configuration: typed, validated, YAML in, resolved YAML out.

Every field has a default taken from the paper where the paper gives one (docs/method.md §2–§4), and a
one-line comment that says where it comes from. A YAML file only needs what differs from the defaults.
Loading checks types, ranges and unknown keys, and every error names the file and the field path, e.g.
``configs/x.yaml: iterations[1].rho: must be in [0, 0.5] ...``, before any model is loaded. Types and
unknown keys are checked by the generic reader ``metareward.typed_yaml`` (from the annotations below);
ranges, which types cannot express, by ``validate`` here. Importing this module imports no torch
(``SFTConfig`` lives here for that reason; ``tests/test_layout.py`` checks it).

Two switches change the method itself:
* ``mode: meta-rewarding`` (default): actor pairs every iteration, judge pairs where an iteration says
  ``train_judge: true``.
* ``mode: self-rewarding``: the paper's baseline (Self-Rewarding + LC, docs/method.md §4.4); no meta-judge
  stage, actor pairs only, whatever the iterations say about the judge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from metareward.errors import InputError
from metareward.files import atomic_write_text
from metareward.typed_yaml import build, errors_in, read_yaml, set_dotted
from metareward.typed_yaml import parse_override as parse_override  # re-exported: the commands' --set reader

ScoringMode = Literal["free_text", "constrained"]


ENGINES = ("hf", "vllm", "openai")
IN_PROCESS = ("hf", "vllm")  # engines that run the model in this machine's processes


def _setting(default: Any, engines: tuple[str, ...]) -> Any:
    """A field of ``EngineConfig`` that applies to ``engines`` only (the others ignore it)."""
    return field(default=default, metadata={"engines": engines})


@dataclass
class EngineConfig:
    """How generation runs: ``name`` picks the engine, the other fields are grouped by the engines they
    apply to (``applies_to``); a field of another engine is ignored, so one config can switch engines
    with ``--set engine.name=...``. Engines: docs/scaling.md; the hf engine's switches:
    docs/performance.md, "Engine internals (hf)"."""

    name: Literal["hf", "vllm", "openai"] = "hf"  # hf: transformers, CPU or one GPU (the default)

    # every engine
    chunk_size: int = _setting(256, ENGINES)  # sequences (a request of n samples counts n) per resumable unit written to disk; smaller = finer resume

    # hf and vllm (the model runs here)
    device: str = _setting("auto", IN_PROCESS)  # auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _setting("auto", IN_PROCESS)  # auto: bf16 where native, else fp32
    threads: int = _setting(0, IN_PROCESS)  # CPU threads for torch (training too); 0 keeps torch's default

    # hf only
    batch_size: int = _setting(32, ("hf",))  # sequences per forward pass
    compile: bool = _setting(False, ("hf",))  # torch.compile the torch decoding path where the C++ kernels do not run
    fused_decoder: bool = _setting(True, ("hf",))  # Llama/Mistral/Qwen2: decode from fused weights (same results)
    decode_kernel: bool = _setting(True, ("hf",))  # CPU: decoding steps and sampling through the C++ extension

    # vllm only
    tensor_parallel_size: int = _setting(1, ("vllm",))  # GPUs per replica
    data_parallel_size: int = _setting(1, ("vllm",))  # replicas, through Ray when > 1
    gpu_memory_utilization: float = _setting(0.85, ("vllm",))  # fraction of each GPU's memory vLLM may take
    ray_address: str | None = _setting(None, ("vllm",))  # data_parallel_size > 1: None starts a local Ray, else joins it

    # openai only
    base_url: str = _setting("http://127.0.0.1:8000/v1", ("openai",))  # the server's OpenAI-compatible API
    api_key_env: str = _setting("OPENAI_API_KEY", ("openai",))  # the NAME of the variable holding the key
    served_model: str | None = _setting(None, ("openai",))  # model name on the server (default: the run's model)
    max_concurrency: int = _setting(16, ("openai",))  # requests in flight at once
    request_timeout: float = _setting(120.0, ("openai",))  # seconds per request
    max_retries: int = _setting(6, ("openai",))  # retries of a failed request, with backoff
    server_command: str | None = _setting(None, ("openai",))  # start/stop a server per model, e.g. "vllm serve {model} --port {port}"
    server_start_timeout: float = _setting(900.0, ("openai",))  # with server_command: seconds to wait for the server

    @staticmethod
    def applies_to(setting: str) -> tuple[str, ...]:
        """The engines that read ``setting`` (a field name other than ``name``)."""
        for f in dataclasses.fields(EngineConfig):
            if f.name == setting and "engines" in f.metadata:
                return f.metadata["engines"]
        raise KeyError(f"engine.{setting}: not an engine setting")

    def settings(self) -> dict[str, Any]:
        """The settings the selected engine reads (``name`` excluded)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if self.name in f.metadata.get("engines", ())}


@dataclass
class ActorConfig:
    """Response sampling (docs/method.md §2.1): K=7 samples at T=0.8, top-p 0.95."""

    k: int = 7
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 1024


@dataclass
class JudgeConfig:
    """LLM-as-a-Judge sampling (docs/method.md §2.2): N=11 judgments per response.

    ``scoring``: ``free_text`` parses the last ``Score: x`` of the judgment (the paper's way; for
    capable models). ``constrained`` appends ``Score: `` after the free-text judgment and reads the
    model's next-token distribution over 0..5: score = expected value (fewer ties), text ends with the
    most likely digit. For small models that never follow the format.

    ``kind`` picks who judges (docs/experiment.md): ``self`` (the paper: the model judges itself),
    ``verifier`` (5 x share of the prompt's checkable constraints satisfied), ``model`` (another model,
    ``model`` on ``engine``), or ``python: package.module:function`` (a reward function (prompt, response)
    -> score in [0, 5]). Only ``self`` is meta-judged.
    """

    n: int = 11
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 512
    scoring: ScoringMode = "free_text"
    template: str | None = None  # path to a custom judge prompt; default: the paper's (templates/judge.txt)
    kind: str = "self"  # self | verifier | model | "python: package.module:function"
    model: str | None = None  # kind model: the judge model (a name or path, like the run's model)
    engine: EngineConfig | None = None  # kind model: the judge's engine; None: the run's engine settings

    def is_self(self) -> bool:
        """Whether the run's own model judges (the paper), i.e. whether there is a judge to meta-judge."""
        return self.kind == "self"


@dataclass
class MetaJudgeConfig:
    """LLM-as-a-Meta-Judge (docs/method.md §3.2–3.3): every pair of distinct judgments, both orders."""

    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 1024
    scoring: ScoringMode = "free_text"
    template: str | None = None  # path to a custom meta-judge prompt
    bt_l2: float = 1e-4  # Bradley–Terry L2 weight per unit of evidence, λ = bt_l2·ΣB (docs/judging.md)
    require_different_scores: bool = True  # drop judge pairs whose two judgments give the same score


@dataclass
class TrainingConfig:
    """DPO (docs/method.md §4.1: lr 5e-6, beta 0.1, global batch 32, cosine, up to 10 epochs) via TRL."""

    backend: Literal["trl", "native"] = "trl"  # native: plain-PyTorch DPO, loss/grads tested equal to TRL's, faster
    method: Literal["full", "lora"] = "full"
    learning_rate: float = 5e-6
    beta: float = 0.1
    epochs: float = 1.0
    batch_size: int = 4  # per device
    gradient_accumulation: int = 8  # batch_size * gradient_accumulation * devices = global batch (32)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    max_length: int = 4096
    gradient_checkpointing: bool = False
    precision: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on GPUs that support it
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    shuffle_seed: int = 0
    save_steps: int = 200  # checkpoint interval; a killed training run resumes from the last checkpoint
    launcher: str | None = None  # e.g. "accelerate launch --config_file configs/accelerate/ddp.yaml": train in a subprocess (multi-GPU)
    report_to: list[str] = field(default_factory=list)  # transformers integrations (tensorboard, trackio, wandb, ...) whichever is installed; both backends; per-step metrics always go to iter_<i>/train_log.jsonl


@dataclass
class IterationConfig:
    """One iteration of the schedule (docs/method.md §4.3)."""

    prompts: int = 5000  # prompts drawn (without replacement across iterations) from the pool
    rho: float = 0.0  # length-control quality tier (docs/method.md §2.4); 0 = plain argmax/argmin
    train_judge: bool = True  # build judge pairs with the meta-judge and train on them
    actor_max_chosen_length: int | None = None  # drop actor pairs whose chosen response is longer (chars)
    judge_max_chosen_length: int | None = None  # drop judge pairs whose chosen judgment is longer (chars)


@dataclass
class SFTConfig:
    """SFT on EFT (step 0 of a run; trained by ``training.sft``, defined here so that reading a config
    imports no torch). Defaults: docs/method.md §4.2's suggestion for an already instructed model."""

    data: str = ""  # train JSONL ({"prompt", "completion"} per line), e.g. eft/train.jsonl
    eval_data: str | None = None  # optional eval JSONL (same format): eval loss reported after training
    learning_rate: float = 1e-6
    min_learning_rate: float = 1e-7  # cosine decay ends here (docs/method.md §4.2: "1e-6 -> 1e-7")
    lr_scheduler: str = "cosine_with_min_lr"
    epochs: float = 2.0  # docs/method.md §4.2: 1-3
    max_steps: int = -1  # > 0 overrides epochs (tests, smoke runs)
    batch_size: int = 4  # per device
    gradient_accumulation: int = 4  # 4 x 4 = global batch 16 (Self-Rewarding's SFT)
    warmup_ratio: float = 0.05
    max_length: int = 2048  # tokens of prompt + completion; longer examples are dropped
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    gradient_checkpointing: bool = False
    method: Literal["full", "lora"] = "full"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    save_steps: int = 200
    seed: int = 0
    report_to: list[str] = field(default_factory=list)  # transformers integrations: tensorboard, trackio, wandb, ...

    def validate(self, prefix: str = "sft") -> None:
        """Range checks; errors name the field (``sft.learning_rate: ...``)."""
        checks = [
            ("data", bool(self.data), "a train JSONL is required (e.g. the train.jsonl of `metareward eft build`)"),
            ("data", not self.data or Path(self.data).is_file(), f"file not found: {self.data}"),
            ("eval_data", self.eval_data is None or Path(self.eval_data).is_file(), f"file not found: {self.eval_data}"),
            ("learning_rate", self.learning_rate > 0, "must be > 0"),
            ("min_learning_rate", 0 <= self.min_learning_rate <= self.learning_rate, "must be in [0, learning_rate]"),
            ("epochs", self.epochs > 0, "must be > 0"),
            ("max_steps", self.max_steps == -1 or self.max_steps > 0, "must be > 0, or -1 for epochs"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("gradient_accumulation", self.gradient_accumulation >= 1, "must be >= 1"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)"),
            ("max_length", self.max_length >= 16, "must be >= 16"),
            ("save_steps", self.save_steps >= 1, "must be >= 1"),
            ("lora_r", self.lora_r >= 1, "must be >= 1"),
        ]
        for name, ok, msg in checks:
            if not ok:
                raise InputError(f"{prefix}.{name}: {msg}" if prefix else f"{name}: {msg}")


@dataclass
class RunConfig:
    """A whole run: model, prompt pool, stage settings and the iteration schedule."""

    run_dir: str = "runs/default"
    model: str = "smollm2-135m"
    prompts: str = ""  # JSONL ({"id"?, "prompt"|"text"|"instruction"}) or plain text, one prompt a line
    mode: Literal["meta-rewarding", "self-rewarding"] = "meta-rewarding"
    seed: int = 0
    engine: EngineConfig = field(default_factory=EngineConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    meta_judge: MetaJudgeConfig = field(default_factory=MetaJudgeConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    iterations: list[IterationConfig] = field(default_factory=lambda: [IterationConfig()])
    sft: SFTConfig | None = None  # optional step 0: SFT on EFT data (docs/method.md §1.1); its model starts iteration 1

    def judge_trained(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (1-based) runs the meta-judge and trains judge pairs."""
        return self.mode == "meta-rewarding" and self.judge.is_self() and self.iterations[iteration - 1].train_judge

    def meta_judge_skip_reason(self, iteration: int) -> str | None:
        """Why iteration ``iteration`` runs no meta-judge (None when it runs one)."""
        if not self.judge.is_self():
            return f"judge.kind: {self.judge.kind} is not the model's own judge; there is no judge to train"
        if self.mode != "meta-rewarding":
            return f"mode: {self.mode} trains the actor only"
        if not self.iterations[iteration - 1].train_judge:
            return f"iterations[{iteration - 1}].train_judge: false"
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A short hash of everything that affects results (not where they are written)."""
        data = self.to_dict()
        data.pop("run_dir")
        if self.judge.is_self():  # the judge-kind fields are newer than runs that must keep their hash
            for name in ("kind", "model", "engine"):
                data["judge"].pop(name)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def settings_hash(*parts: Any) -> str:
    """Hash of the settings and inputs a stage depends on; stored in its manifest entry."""
    blob = json.dumps(
        [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts], sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- loading and validation


def _require(cond: bool, path: str, msg: str) -> None:
    if not cond:
        raise InputError(f"{path}: {msg}")


def validate_engine(e: EngineConfig) -> None:
    """Range checks of the engine settings (errors name ``engine.<field>``)."""
    _require(e.threads >= 0, "engine.threads", f"must be >= 0, got {e.threads}")
    _require(e.batch_size >= 1, "engine.batch_size", f"must be >= 1, got {e.batch_size}")
    _require(e.chunk_size >= 1, "engine.chunk_size", f"must be >= 1, got {e.chunk_size}")
    _require(0 < e.gpu_memory_utilization <= 1, "engine.gpu_memory_utilization", "must be in (0, 1]")
    _require(e.max_concurrency >= 1, "engine.max_concurrency", "must be >= 1")


JUDGE_KINDS = ("self", "verifier", "model")
PYTHON_JUDGE = "python:"


def validate_judge_kind(j: JudgeConfig) -> None:
    """``judge.kind`` is one of ``JUDGE_KINDS`` or ``python: package.module:function``; ``model`` needs
    ``judge.model``. (Whether the function imports is checked by the run's preflight.)"""
    if j.kind.startswith(PYTHON_JUDGE):
        module, _, name = j.kind[len(PYTHON_JUDGE):].strip().partition(":")
        _require(bool(module) and bool(name), "judge.kind", f"expected 'python: package.module:function', got {j.kind!r}")
    else:
        _require(j.kind in JUDGE_KINDS, "judge.kind",
                 f"must be one of {list(JUDGE_KINDS)} or 'python: package.module:function', got {j.kind!r}")
    _require(j.kind != "model" or bool(j.model), "judge.model", "judge.kind: model needs a judge model")
    if j.engine is not None:
        validate_engine(j.engine)


def validate(cfg: RunConfig) -> None:
    """Range checks that types alone cannot express."""
    validate_engine(cfg.engine)
    for name, sec in (("actor", cfg.actor), ("judge", cfg.judge), ("meta_judge", cfg.meta_judge)):
        _require(sec.temperature >= 0, f"{name}.temperature", f"must be >= 0, got {sec.temperature}")
        _require(0 < sec.top_p <= 1, f"{name}.top_p", f"must be in (0, 1], got {sec.top_p}")
        _require(sec.max_tokens >= 1, f"{name}.max_tokens", f"must be >= 1, got {sec.max_tokens}")
        template = getattr(sec, "template", None)
        if template is not None:
            _require(Path(template).is_file(), f"{name}.template", f"file not found: {template}")
    _require(cfg.actor.k >= 2, "actor.k", f"need at least 2 responses per prompt to form a pair, got {cfg.actor.k}")
    _require(cfg.judge.n >= 1, "judge.n", f"must be >= 1, got {cfg.judge.n}")
    validate_judge_kind(cfg.judge)
    _require(cfg.meta_judge.bt_l2 >= 0, "meta_judge.bt_l2", "must be >= 0")
    t = cfg.training
    _require(t.learning_rate > 0, "training.learning_rate", "must be > 0")
    _require(t.beta > 0, "training.beta", "must be > 0")
    _require(t.epochs > 0, "training.epochs", "must be > 0")
    _require(t.batch_size >= 1, "training.batch_size", "must be >= 1")
    _require(t.gradient_accumulation >= 1, "training.gradient_accumulation", "must be >= 1")
    _require(0 <= t.warmup_ratio < 1, "training.warmup_ratio", "must be in [0, 1)")
    _require(t.max_length >= 16, "training.max_length", "must be >= 16")
    _require(t.backend == "trl" or t.method == "full", "training.backend",
             "native trains full models only; use backend: trl for method: lora")
    _require(t.backend == "trl" or not t.launcher, "training.backend",
             "multi-process training (launcher) runs TRL; use backend: trl with a launcher")
    _require(len(cfg.iterations) >= 1, "iterations", "need at least one iteration")
    for i, it in enumerate(cfg.iterations):
        p = f"iterations[{i}]"
        _require(it.prompts >= 1, f"{p}.prompts", f"must be >= 1, got {it.prompts}")
        _require(0 <= it.rho <= 0.5, f"{p}.rho", f"must be in [0, 0.5] (above 0.5 the tiers overlap), got {it.rho}")
        for name in ("actor_max_chosen_length", "judge_max_chosen_length"):
            v = getattr(it, name)
            _require(v is None or v > 0, f"{p}.{name}", f"must be > 0 or null, got {v}")
    _require(bool(cfg.prompts), "prompts", "a prompts file is required")
    if cfg.sft is not None:
        cfg.sft.validate("sft")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load, merge ``overrides`` (dotted keys), type-check and validate a YAML config.

    Relative paths in the file (prompts, templates) are taken relative to the current directory,
    the way a user types them on the command line next to the config.
    """
    path = Path(path)
    data = read_yaml(path)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    with errors_in(path):
        cfg = build(RunConfig, data, "")
        validate(cfg)
    return cfg


def load_engine_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> EngineConfig:
    """The ``engine:`` section of a run config YAML (the rest of the file is not read; None: the
    defaults), with ``overrides`` (keys of the section, e.g. ``{"name": "vllm", "batch_size": 8}``),
    type-checked and range-checked. For commands that only generate (``prompts generate``, ``eft build``).
    Errors name the file (or ``command line``) and ``engine.<field>``."""
    data: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        path = Path(path)
        loaded = read_yaml(path)
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: expected a mapping, got {loaded!r}")
        data = loaded.get("engine") or {}
        where = str(path)
    if not isinstance(data, dict):
        raise InputError(f"{where}: engine: expected a mapping, got {data!r}")
    data = {**data, **(overrides or {})}
    with errors_in(where):
        cfg = build(EngineConfig, data, "engine")
        validate_engine(cfg)
    return cfg


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the fully resolved config (every default spelled out) atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
