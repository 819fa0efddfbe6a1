"""Sweeps as independent tasks: inline, local process pool and Ray give the same results in task order."""
from __future__ import annotations

import pytest

from onnxprune.errors import UsageError
from onnxprune.executor import run_tasks


def _init(shared: dict) -> dict:
    return {"offset": shared["offset"], "calls": 0}


def _fn(state: dict, task: int) -> tuple[int, int]:
    state["calls"] += 1  # per-worker state persists between tasks
    return task * task + state["offset"], state["calls"]


TASKS = list(range(7))


def test_inline_and_pool_agree() -> None:
    inline, s1 = run_tasks(_fn, TASKS, init=_init, shared={"offset": 3}, workers=1)
    pooled, s2 = run_tasks(_fn, TASKS, init=_init, shared={"offset": 3}, workers=2)
    assert [r[0] for r in inline] == [r[0] for r in pooled] == [t * t + 3 for t in TASKS]
    assert [r[1] for r in inline] == list(range(1, 8))  # one state, built once
    assert s1.executor == "inline" and s2.executor == "local" and s2.workers == 2 and s2.tasks == 7


def _die_in_worker(state: dict, task: int) -> int:
    import multiprocessing
    import os

    if task == 3 and multiprocessing.parent_process() is not None:
        os._exit(1)  # a worker killed mid-sweep (as the OOM killer would)
    return task + state["offset"]


def test_broken_pool_finishes_inline() -> None:
    results, stats = run_tasks(_die_in_worker, TASKS, init=_init, shared={"offset": 1}, workers=2)
    assert results == [t + 1 for t in TASKS]
    assert "pool broke" in stats.executor


def test_bad_arguments() -> None:
    with pytest.raises(UsageError):
        run_tasks(_fn, TASKS, init=_init, shared={"offset": 0}, executor="dask")
    with pytest.raises(UsageError):
        run_tasks(_fn, TASKS, init=_init, shared={"offset": 0}, workers=0)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_matches_local(ray_local) -> None:
    inline, _ = run_tasks(_fn, TASKS, init=_init, shared={"offset": 5}, workers=1)
    on_ray, stats = run_tasks(_fn, TASKS, init=_init, shared={"offset": 5}, workers=2, executor="ray")
    assert [r[0] for r in on_ray] == [r[0] for r in inline]
    assert stats.executor == "ray"
