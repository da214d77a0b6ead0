"""Data parallelism through Ray: two local CPU replicas of the hf engine (Ray actors) give the same records,
in the same order, as one engine, also when a replica dies mid-stage and its share is rerun."""

from __future__ import annotations

import functools
import os

import pytest
from servers import tiny_judge_requests

from metareward.engines.ray_dp import split_balanced


def test_split_balanced():
    assert split_balanced([1, 1, 1, 1], 2) == [range(0, 2), range(2, 4)]
    assert split_balanced([3, 1, 1, 1], 2) == [range(0, 1), range(1, 4)]
    assert split_balanced([1], 3) == [range(0, 1), range(1, 1), range(1, 1)]
    assert split_balanced([], 2) == [range(0, 0), range(0, 0)]
    shards = split_balanced([2] * 7, 3)
    assert [len(s) for s in shards] == [3, 2, 2] and shards[-1].stop == 7


@pytest.mark.slow
def test_two_replicas_same_records_in_order_with_a_crashed_replica(tmp_path):
    pytest.importorskip("ray")
    from metareward.engines.base import Engine
    from metareward.engines.hf import HFEngine
    from metareward.engines.ray_dp import RayDataParallelEngine
    from metareward.models import resolve_model

    model = resolve_model("smollm2-135m")
    reqs, _ = tiny_judge_requests(n=2, max_tokens=8)
    # batch_size = n: every batch holds one request, so outputs depend only on the request.
    make_hf = functools.partial(HFEngine, model, device="cpu", dtype="float32", batch_size=2, threads=1)
    reference = [(o.id, o.samples) for o in make_hf().generate(reqs)]
    reference.sort(key=lambda x: [r.id for r in reqs].index(x[0]))

    marker = str(tmp_path / "crashed")

    class CrashOnce(Engine):
        """The first replica to generate dies (process exit) once; its replacement works."""

        def __init__(self):
            self.inner = make_hf()

        def generate(self, requests):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                os._exit(1)
            except FileExistsError:
                pass
            return self.inner.generate(requests)

        def choice_probs(self, requests):
            return self.inner.choice_probs(requests)

    dp = RayDataParallelEngine(CrashOnce, replicas=2, num_cpus=1)
    try:
        outs = [(o.id, o.samples) for o in dp.generate(reqs)]
        assert dp.replaced == 1
        again = [(o.id, o.samples) for o in dp.generate(reqs)]
    finally:
        dp.close()
    assert outs == reference
    assert again == reference
