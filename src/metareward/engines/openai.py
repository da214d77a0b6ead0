"""The OpenAI-compatible engine: chat completions against any server that speaks the OpenAI API.

Servers: ``vllm serve``, SGLang, llama.cpp's ``llama-server``, TGI, LM Studio, or a hosted API. The engine
holds no model; it sends one HTTP request per generation request (or per sample, see below) from a
bounded thread pool and yields each output as it arrives.

Behaviour:

* **Concurrency**: at most ``max_concurrency`` requests in flight (one worker thread each).
* **Timeouts and retries**: each HTTP call has ``request_timeout`` seconds. Connection errors, timeouts,
  408/409/429 and 5xx replies are retried up to ``max_retries`` times with exponential backoff
  (``backoff_base * 2**attempt`` seconds, capped at ``backoff_max``, times a random factor in [0.5, 1]
  so that many workers do not retry in lock step); a ``Retry-After`` header is honoured (capped the same
  way). Other 4xx replies (bad request, unknown model, bad key) fail at once with the server's message.
  A request that still fails raises ``EngineRequestError``; the stage's chunk log keeps every finished
  chunk, so rerunning the stage resumes where it stopped.
* **n samples**: sent as ``n`` in one request. A server that rejects ``n`` (HTTP 400 naming it) or returns
  fewer choices is remembered, and from then on each request is fanned out to ``n`` single-sample
  requests, sample ``k`` with seed ``sub_seed(seed, k)`` so the samples differ.
* **Seed**: passed through (folded to 31 bits, which every server accepts). Whether a server samples
  reproducibly from a seed is up to the server (vLLM does, per request).
* **API key**: read from the environment variable named ``api_key_env`` (default ``OPENAI_API_KEY``). It is
  handed to the HTTP client and nowhere else: never logged, never part of an error message, the config
  or any artifact (the config stores only the variable's *name*). Local servers need none; ``EMPTY`` is
  sent then.
* **Token counts**: ``usage.completion_tokens`` for single-sample replies; for ``n`` > 1 replies, which
  report one total, each sample is counted with the model's tokenizer when the model is a local folder
  (plus one for the stop token when it stopped), else the total is split by character length.

``choice_probs`` (the ``constrained`` scoring mode) asks for one token after a forced start of the
assistant turn, with ``logprobs=True, top_logprobs=20``: the messages end with an assistant message
holding the prefix, and ``continue_final_message=True, add_generation_prompt=False`` are sent as extra
body fields. Supported by vLLM (``vllm serve``) and SGLang; llama.cpp's server continues a final
assistant message by itself and returns ``top_logprobs``. Hosted OpenAI models and TGI do not continue an
assistant message: the engine then raises ``InputError`` telling the user to use ``free_text`` scoring.
The prefix is split the way the model's tokenizer splits ``prefix + choice`` (the same rule as the
``hf`` engine: see ``tokens.choice_context``), so the server is asked for exactly the token the ``hf`` engine
reads; a choice absent from the top 20 gets probability 0 (it is below the 20th token's probability).
Without a local tokenizer both splits are tried (space kept in the prefix, then space moved into the
choice token).

The server serves fixed weights. The loop trains a new model every iteration, so a multi-iteration run
needs a server on each iteration's ``iter_<i>/model``: either set ``engine.server_command`` and the engine
starts and stops the server for each model itself (``engines.server``), or restart it by hand between
iterations. With ``served_model`` unset the engine asks for the model by its path and checks
``/v1/models`` lists it, which fails loudly when the server still serves the previous iteration's weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from metareward.config import EngineConfig
from metareward.engines.base import (
    ChoiceOutput,
    ChoiceRequest,
    Completion,
    Engine,
    GenerationOutput,
    GenerationRequest,
)
from metareward.engines.tokens import choice_context
from metareward.errors import InputError
from metareward.seeds import sample_seed

log = logging.getLogger("metareward.engines.openai")

T = TypeVar("T")
RETRY_STATUS = frozenset({408, 409, 429})
TOP_LOGPROBS = 20  # the OpenAI API's maximum; vLLM and llama.cpp accept it too


class EngineRequestError(RuntimeError):
    """A request that failed for good (after retries, or with a non-retryable reply)."""


def fold_seed(seed: int) -> int:
    return seed & 0x7FFF_FFFF


def sub_seed(seed: int, k: int) -> int:
    """Seed of sample ``k`` when ``n`` samples are fanned out to single requests (``seeds.sample_seed``)."""
    return sample_seed(seed, k)


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def _short(exc: BaseException) -> str:
    """A one-line description of an API error: type, status and the server's message (no headers)."""
    status = _status(exc)
    msg = str(getattr(exc, "message", None) or exc).replace("\n", " ")
    return f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: {msg[:300]}"


class OpenAIEngine(Engine):
    """Chat completions on an OpenAI-compatible server. See the module docstring."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        request_timeout: float = 120.0,
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        tokenizer_path: str | None = None,
        check_model: bool = True,
    ):
        import openai

        self._openai = openai
        self.base_url = base_url
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        key = os.environ.get(api_key_env) or "EMPTY"
        # max_retries=0: retries are ours (counted, jittered, and the same for every error kind).
        self._client = openai.OpenAI(base_url=base_url, api_key=key, timeout=request_timeout, max_retries=0)
        del key
        self._n_supported: bool | None = None  # None: not known yet
        self._lock = threading.Lock()
        self.retries = 0  # retried calls so far (diagnostics and tests)
        self.tokenizer = None
        self.server = None  # a ManagedServer this engine stops on close (from_config with server_command)
        if tokenizer_path and (Path(tokenizer_path) / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        if check_model:
            self._check_model()

    @classmethod
    def from_config(cls, cfg: EngineConfig, model_path: str, log_dir: str | Path | None = None) -> OpenAIEngine:
        """``served_model`` names the model on the server; unset, the model is asked for by ``model_path``.

        With ``server_command`` the server is started here for ``model_path`` (log in
        ``log_dir/server.log``) and stopped by ``close`` (``engines.server``)."""
        server = None
        if cfg.server_command:
            from metareward.engines.server import ManagedServer

            log_path = Path(log_dir or tempfile.gettempdir()) / "server.log"
            server = ManagedServer(cfg.server_command, model_path, cfg.base_url, log_path, cfg.server_start_timeout)
            log.info("starting the model server for %s (log: %s)", model_path, log_path)
            server.start()
        try:
            engine = cls(
                base_url=cfg.base_url,
                model=cfg.served_model or model_path,
                api_key_env=cfg.api_key_env,
                max_concurrency=cfg.max_concurrency,
                request_timeout=cfg.request_timeout,
                max_retries=cfg.max_retries,
                tokenizer_path=model_path,
            )
        except BaseException:
            if server is not None:
                server.stop()
            raise
        engine.server = server
        return engine

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIEngine(base_url={self.base_url!r}, model={self.model!r})"

    # ------------------------------------------------------------------ HTTP with retries

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` with retries on connection errors, timeouts, 408/409/429 and 5xx (see module docstring)."""
        openai = self._openai
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except openai.APIConnectionError as e:  # includes APITimeoutError
                err: Exception = e
                retry_after = None
            except openai.APIStatusError as e:
                if e.status_code not in RETRY_STATUS and e.status_code < 500:
                    raise
                err = e
                retry_after = e.response.headers.get("retry-after")
            if attempt == self.max_retries:
                raise EngineRequestError(
                    f"{self.base_url}: {what} failed after {attempt + 1} attempts: {_short(err)}"
                ) from None
            delay = min(self.backoff_max, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)
            if retry_after:
                with contextlib.suppress(ValueError):  # an HTTP date instead of seconds: keep our delay
                    delay = min(self.backoff_max, max(delay, float(retry_after)))
            with self._lock:
                self.retries += 1
            log.warning("%s: %s; retry %d/%d in %.1fs", what, _short(err), attempt + 1, self.max_retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _check_model(self) -> None:
        """Fail early (with what the server does serve) when the server does not list ``self.model``."""
        try:
            served = [m.id for m in self._call(lambda: list(self._client.models.list()), "GET /models")]
        except self._openai.NotFoundError:
            log.warning("%s has no /models endpoint; not checking the model name", self.base_url)
            return
        if served and self.model not in served:
            raise InputError(
                f"engine: the server at {self.base_url} serves {served}, not {self.model!r}. Start it on this "
                "model (e.g. `vllm serve <model path>`), or set engine.served_model to the name it serves "
                "(only for a single iteration: the server's weights do not change when the loop trains)."
            )

    def _map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> Iterator[T]:
        """``fn`` over ``items`` on at most ``max_concurrency`` threads, yielding results as they finish.
        The first failure cancels what has not started and is raised."""
        if not items:
            return
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items)), thread_name_prefix="openai")
        pending: set[Future] = set()
        try:
            it = iter(items)
            for item in it:
                pending.add(pool.submit(fn, item))
                if len(pending) >= 2 * self.max_concurrency:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
                for item in it:
                    pending.add(pool.submit(fn, item))
                    if len(pending) >= 2 * self.max_concurrency:
                        break
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ generation

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutput]:
        yield from self._map(self._generate_one, requests)

    def _create(self, what: str, **params: Any) -> Any:
        return self._call(lambda: self._client.chat.completions.create(model=self.model, **params), what)

    def _generate_one(self, r: GenerationRequest) -> GenerationOutput:
        params = dict(
            messages=list(r.messages),
            temperature=r.sampling.temperature,
            top_p=r.sampling.top_p,
            max_tokens=r.sampling.max_tokens,
        )
        if r.n > 1 and self._n_supported is not False:
            try:
                resp = self._create(f"request {r.id}", n=r.n, seed=fold_seed(r.seed), **params)
            except self._openai.BadRequestError:
                resp = None  # maybe ``n`` itself; a single-sample request below raises if it was not
            if resp is not None and len(resp.choices) == r.n:
                self._n_supported = True
                choices = sorted(resp.choices, key=lambda c: c.index)
                texts = [c.message.content or "" for c in choices]
                finished = [c.finish_reason == "stop" for c in choices]
                total = resp.usage.completion_tokens if resp.usage else None
                counts = self._count(texts, finished, total)
                return GenerationOutput(r.id, tuple(Completion(t.strip(), n, f)
                                                    for t, n, f in zip(texts, counts, finished, strict=True)))
            if self._n_supported is None:
                log.warning("%s does not honour n=%d; fanning out to single-sample requests", self.base_url, r.n)
            self._n_supported = False
        samples = []
        for k in range(r.n):
            seed = fold_seed(r.seed) if r.n == 1 else sub_seed(r.seed, k)
            resp = self._create(f"request {r.id}#{k}", n=1, seed=seed, **params)
            c = resp.choices[0]
            text = c.message.content or ""
            fin = c.finish_reason == "stop"
            total = resp.usage.completion_tokens if resp.usage else None
            samples.append(Completion(text.strip(), self._count([text], [fin], total)[0], fin))
        return GenerationOutput(r.id, tuple(samples))

    def _count(self, texts: Sequence[str], finished: Sequence[bool], total: int | None) -> list[int]:
        """Generated tokens per sample (see module docstring)."""
        if total is not None and len(texts) == 1:
            return [int(total)]
        if self.tokenizer is not None:
            return [len(self.tokenizer.encode(t, add_special_tokens=False)) + int(f) for t, f in zip(texts, finished)]
        if total is None:
            return [0] * len(texts)
        chars = [max(1, len(t)) for t in texts]
        return [round(total * c / sum(chars)) for c in chars]

    # ------------------------------------------------------------------ choice probabilities

    def choice_probs(self, requests: Sequence[ChoiceRequest]) -> Iterator[ChoiceOutput]:
        yield from self._map(self._choice_one, requests)

    def _splits(self, prefix: str, choices: Sequence[str]) -> list[tuple[str, list[str]]]:
        """(assistant text to send, token string of each choice) to try, best first."""
        if self.tokenizer is not None:
            context, ids = choice_context(self.tokenizer, prefix, choices)
            sent = self.tokenizer.decode(context)
            return [(sent, [self.tokenizer.decode([i]) for i in ids])]
        stripped = prefix.rstrip()
        ws = prefix[len(stripped) :]
        splits = [(prefix, list(choices))]
        if ws:
            splits.append((stripped, [ws + c for c in choices]))
        return splits

    def _choice_one(self, r: ChoiceRequest) -> ChoiceOutput:
        for sent, tokens in self._splits(r.assistant_prefix, r.choices):
            top = self._top_logprobs(r, sent)
            probs = [sum(math.exp(lp) for tok, lp in top if tok == t) for t in tokens]
            if sum(probs) > 0:
                return ChoiceOutput(r.id, [p / sum(probs) for p in probs])
        # The model puts (next to) no mass on any choice: no distribution to read. NaN probabilities make
        # the judgment (or meta-judgment, or annotation) invalid downstream (``parsing.check_probabilities``),
        # as alpaca_eval drops such an annotation, instead of stopping the whole stage.
        warnings.warn(
            f"{self.base_url}: request {r.id}: none of the choices {list(r.choices)} is among the top "
            f"{TOP_LOGPROBS} next tokens after {r.assistant_prefix[-30:]!r} (top: {[t for t, _ in top[:5]]}); "
            "the result is invalid", RuntimeWarning, stacklevel=2,
        )
        return ChoiceOutput(r.id, [math.nan] * len(r.choices))

    def _top_logprobs(self, r: ChoiceRequest, sent: str) -> list[tuple[str, float]]:
        messages = list(r.messages)
        extra: dict[str, Any] = {}
        if sent:
            messages.append({"role": "assistant", "content": sent})
            extra = {"continue_final_message": True, "add_generation_prompt": False}
        try:
            resp = self._create(
                f"choice request {r.id}", messages=messages, max_tokens=1, temperature=0.0,
                logprobs=True, top_logprobs=TOP_LOGPROBS, extra_body=extra or None,
            )
        except self._openai.BadRequestError as e:
            raise InputError(self._unsupported(_short(e))) from None
        lp = resp.choices[0].logprobs
        if lp is None or not lp.content or not lp.content[0].top_logprobs:
            raise InputError(self._unsupported("the reply has no top_logprobs"))
        return [(t.token, t.logprob) for t in lp.content[0].top_logprobs]

    def _unsupported(self, why: str) -> str:
        return (
            f"engine: the server at {self.base_url} cannot give next-token probabilities after an assistant "
            f"prefix ({why}), which the constrained scoring mode needs. Use judge.scoring: free_text and "
            "meta_judge.scoring: free_text with this server, or serve the model with vLLM/SGLang/llama.cpp, "
            "or use the hf or vllm engine."
        )

    def close(self) -> None:
        self._client.close()
        if self.server is not None:
            self.server.stop()
