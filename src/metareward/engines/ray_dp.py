"""Data parallelism across GPUs and nodes: a stage's requests split across engine replicas run as Ray actors.

Each replica is one engine (a ``VLLMEngine`` on one GPU or on a tensor-parallel group of GPUs, or any
other ``Engine``) living in its own Ray actor, which Ray places on a node with the resources it asks for
(``num_gpus = tensor_parallel_size`` for vLLM), spreading the replicas over the nodes (Ray's ``SPREAD``
strategy: losing a node loses as few replicas as possible). For every ``generate`` / ``choice_probs`` call:

* the requests are cut into one contiguous shard per replica, balanced by cost (a request with ``n``
  samples counts ``n``), and the shards run concurrently;
* when a shard fails (its actor died: node lost, out of memory, killed; or the engine raised), the
  replica is replaced by a fresh actor (wherever the cluster has room) and the shard is rerun on it, up
  to ``max_attempts`` times per shard; then the error is raised, and the loop's chunk log keeps the
  chunks finished before;
* the outputs are merged back into request order.

Results equal a single engine's when the engine's outputs depend only on each request (vLLM samples with
a per-request seed; the ``hf`` engine does when each batch holds one request) — the test checks this.

Ray: ``ray_address`` unset starts a local Ray on this machine (stopped again on ``close``); ``"auto"`` or
``"ray://head:10001"`` joins an existing cluster (started with ``ray start --head`` / ``ray start
--address=head:6379`` on each node, metareward and vLLM installed on every node, the model folder on
shared storage or at the same path on every node). ``tests/test_ray_multinode.py`` runs this path on a
two-node cluster on one machine and removes a node mid-stage.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from metareward.config import EngineConfig
from metareward.engines.base import ChoiceOutput, ChoiceRequest, Engine, GenerationOutput, GenerationRequest

log = logging.getLogger("metareward.engines.ray_dp")


class _Replica:
    """The body of one Ray actor: builds its engine once, then serves whole shards."""

    def __init__(self, factory: Callable[[], Engine]):
        self.engine = factory()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        return list(self.engine.generate(requests))

    def choice_probs(self, requests: Sequence[ChoiceRequest]) -> list[ChoiceOutput]:
        return list(self.engine.choice_probs(requests))

    def close(self) -> None:
        self.engine.close()


def split_balanced(costs: Sequence[int], parts: int) -> list[range]:
    """Contiguous index ranges, one per part (some maybe empty), each holding about ``sum(costs)/parts``."""
    total = sum(costs)
    bounds, acc, part = [0], 0, 1
    for i, c in enumerate(costs):
        acc += c
        while part < parts and acc >= total * part / parts:
            bounds.append(i + 1)
            part += 1
    bounds += [len(costs)] * (parts + 1 - len(bounds))
    return [range(bounds[k], bounds[k + 1]) for k in range(parts)]


class RayDataParallelEngine(Engine):
    """``replicas`` engines built by ``factory`` inside Ray actors. See the module docstring."""

    name = "ray-dp"

    def __init__(
        self,
        factory: Callable[[], Engine],
        replicas: int,
        num_gpus: float = 0,
        num_cpus: float = 1,
        address: str | None = None,
        max_attempts: int = 3,
    ):
        import ray

        self._ray = ray
        self.started_ray = False
        if not ray.is_initialized():
            if address is None:
                ray.init(num_cpus=max(int(num_cpus * replicas), 1), include_dashboard=False,
                         log_to_driver=True, configure_logging=False)
                self.started_ray = True
            else:
                ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
        self.factory = factory
        self.max_attempts = max_attempts
        self._actor_cls = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=0,
                                     scheduling_strategy="SPREAD")(_Replica)
        self.actors = [self._new_actor() for _ in range(replicas)]
        self.replaced = 0  # replicas replaced after a failure (diagnostics and tests)

    @classmethod
    def from_config(cls, cfg: EngineConfig, factory: Callable[[], Engine]) -> RayDataParallelEngine:
        """``cfg.data_parallel_size`` replicas of ``factory()``, each asking Ray for ``cfg.tensor_parallel_size``
        GPUs (none when ``cfg.device`` is ``cpu``) and ``cfg.threads`` CPUs, on the cluster at
        ``cfg.ray_address`` (None: a local Ray). ``engines.vllm.make_vllm_engine`` passes a vLLM factory."""
        gpus = cfg.tensor_parallel_size if cfg.device != "cpu" else 0
        return cls(factory, cfg.data_parallel_size, num_gpus=gpus, num_cpus=max(cfg.threads, 1),
                   address=cfg.ray_address)

    def _new_actor(self) -> Any:
        return self._actor_cls.remote(self.factory)

    def _replace(self, k: int) -> None:
        with contextlib.suppress(Exception):  # already dead
            self._ray.kill(self.actors[k], no_restart=True)
        self.actors[k] = self._new_actor()
        self.replaced += 1

    def _run(self, method: str, requests: Sequence[Any], costs: Sequence[int]) -> list[Any]:
        """Run ``method`` on every shard, retrying failed shards on replacement replicas; request order."""
        ray = self._ray
        shards = split_balanced(costs, len(self.actors))
        results: dict[int, list[Any]] = {}
        attempts = [0] * len(shards)
        pending: dict[Any, int] = {}

        def submit(k: int) -> None:
            attempts[k] += 1
            ref = getattr(self.actors[k], method).remote([requests[i] for i in shards[k]])
            pending[ref] = k

        for k, shard in enumerate(shards):
            if len(shard):
                submit(k)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(done[0])
            try:
                results[k] = ray.get(done[0])
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                if attempts[k] >= self.max_attempts:
                    raise RuntimeError(
                        f"data-parallel replica {k}: shard of {len(shards[k])} requests failed "
                        f"{attempts[k]} times; last error: {str(e).splitlines()[0][:300]}"
                    ) from None
                log.warning("replica %d failed (%s); replacing it and rerunning its %d requests",
                            k, type(e).__name__, len(shards[k]))
                self._replace(k)
                submit(k)
        # Engines yield in any order (the hf engine: by prompt length); merge back into request order.
        by_id = {out.id: out for k in range(len(shards)) for out in results.get(k, [])}
        missing = [r.id for r in requests if r.id not in by_id]
        if missing:
            raise RuntimeError(f"data-parallel replicas returned no output for {missing[:5]}")
        return [by_id[r.id] for r in requests]

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationOutput]:
        yield from self._run("generate", requests, [r.n for r in requests])

    def choice_probs(self, requests: Sequence[ChoiceRequest]) -> Iterator[ChoiceOutput]:
        yield from self._run("choice_probs", requests, [1] * len(requests))

    def abort(self) -> None:
        """End every replica's actor at once, without waiting for the shards in flight (an interrupt), and
        stop Ray if started here; a replica's engine processes end with its actor's worker process."""
        actors, self.actors = self.actors, []
        for a in actors:
            with contextlib.suppress(Exception):
                self._ray.kill(a, no_restart=True)
        if actors and self.started_ray:
            self._ray.shutdown()

    def close(self) -> None:
        """Close every replica's engine (frees its GPUs), end the actors, and stop Ray if started here."""
        ray = self._ray
        if not self.actors:
            return
        closes = [a.close.remote() for a in self.actors]
        try:
            ray.get(closes, timeout=120)
        except Exception as e:  # noqa: BLE001 - a dead replica holds nothing
            log.warning("closing replicas: %s", e)
        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)
        self.actors = []
        if self.started_ray:
            ray.shutdown()
