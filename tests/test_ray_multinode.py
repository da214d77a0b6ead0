"""Multi-node generation on one machine: a two-node Ray cluster (``ray.cluster_utils.Cluster``, each node
its own raylet with its own CPUs), a judge stage through ``RayDataParallelEngine.from_config`` with
``engine.ray_address`` pointing at the cluster (the path the README gives for many nodes), one replica on
each node; the second node is removed mid-stage. The stage must finish, through the loop's chunked store,
with every record exactly once and the outputs a single engine gives.

The replicas run a slowed ``FakeEngine`` (outputs a pure function of each request), so the test costs
the cluster's start-up and a few seconds of generation."""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from pathlib import Path

import pytest
from fakes import FakeEngine

from metareward.config import EngineConfig, JudgeConfig
from metareward.engines.base import GenerationOutput
from metareward.records import Prompt, Response
from metareward.stages.chunks import run_chunked
from metareward.stages.judge import judge_requests

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent


class SlowNodeEngine(FakeEngine):
    """FakeEngine that says where it runs (a file per replica) and takes ``delay`` seconds a request."""

    def __init__(self, marks: str, delay: float):
        super().__init__()
        import ray

        self.marks, self.delay = Path(marks), delay
        self.node = ray.get_runtime_context().get_node_id()
        (self.marks / f"built-{os.getpid()}").write_text(self.node)

    def generate(self, requests):
        (self.marks / f"generating-{os.getpid()}").write_text(self.node)
        for out in super().generate(requests):
            time.sleep(self.delay)
            yield out


def stage_requests():
    prompts = {f"q{i}": Prompt(f"q{i}", f"Question {i}: name a number above {i}.") for i in range(6)}
    responses = [Response(f"q{i}/r{k}", f"q{i}", k, f"{i + k + 1}.") for i in range(6) for k in range(2)]
    return judge_requests(prompts, responses, JudgeConfig(n=2, max_tokens=10), run_seed=0, iteration=1)


def marks_of(marks: Path, kind: str) -> dict[str, str]:
    """pid -> node id of the replicas that wrote a ``kind`` mark."""
    return {p.name.split("-", 1)[1]: p.read_text() for p in marks.glob(f"{kind}-*")}


def test_judge_stage_survives_losing_a_node(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from metareward.engines.ray_dp import RayDataParallelEngine

    # the raylets (and so the replicas' worker processes) inherit this: they import ``fakes`` from tests/
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    marks = tmp_path / "marks"
    marks.mkdir()
    reqs = stage_requests()
    reference = {o.id: o.to_columns() for o in FakeEngine().generate(reqs)}

    # head: room for one replica plus its replacement; second node: one replica
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    dp = None
    try:
        second = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # SPREAD places the replicas over the nodes the scheduler sees: on a loaded machine the second
        # node's CPU may reach it late, and both replicas then land on the head; wait until it is seen
        ray.init(address=cluster.address, include_dashboard=False, configure_logging=False)
        deadline = time.monotonic() + 60
        while ray.available_resources().get("CPU", 0) < 3:
            assert time.monotonic() < deadline, f"the cluster's CPUs never showed: {ray.available_resources()}"
            time.sleep(0.1)
        cfg = EngineConfig(device="cpu", threads=1, data_parallel_size=2, ray_address=cluster.address)
        dp = RayDataParallelEngine.from_config(cfg, functools.partial(SlowNodeEngine, str(marks), 0.4))
        assert not dp.started_ray  # used the connection to the cluster, did not start its own Ray
        log_path = tmp_path / "judge.chunks.jsonl"
        result: dict = {}

        def stage() -> None:
            try:
                result["outs"] = run_chunked(log_path, reqs, dp.generate, GenerationOutput.to_columns,
                                             len(reqs), "judge")
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                result["error"] = e

        runner = threading.Thread(target=stage)
        runner.start()
        deadline = time.monotonic() + 300
        while not ({second.node_id} <= set(marks_of(marks, "generating").values())) and runner.is_alive():
            assert time.monotonic() < deadline, f"no replica generating on the second node: {marks_of(marks, 'built')}"
            time.sleep(0.1)
        built = marks_of(marks, "built")
        assert set(built.values()) == {cluster.head_node.node_id, second.node_id}  # one replica per node
        cluster.remove_node(second, allow_graceful=False)  # the node dies mid-stage
        runner.join(timeout=600)
        assert not runner.is_alive()
        if "error" in result:
            raise result["error"]
        assert dp.replaced == 1
        rebuilt = {pid: node for pid, node in marks_of(marks, "built").items() if pid not in built}
        assert list(rebuilt.values()) == [cluster.head_node.node_id]  # the replacement went where there was room
    finally:
        if dp is not None:
            dp.close()
        ray.shutdown()
        cluster.shutdown()

    outs = result["outs"]
    assert outs == reference  # the outputs one engine gives, every request
    logged = [o["id"] for line in log_path.read_text().splitlines() for o in json.loads(line)["outputs"]]
    assert logged == [r.id for r in reqs]  # every record exactly once, in request order
