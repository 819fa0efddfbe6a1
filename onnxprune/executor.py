"""Sweeps as lists of independent tasks: a local process pool, or Ray.

A sweep (CAR, sensitivity, the budget search) is ``fn(state, task) -> result`` over a
list of tasks. ``state`` is built once per worker by ``init(shared)`` from data shared
with every worker (model bytes, calibration arrays): each worker builds its sessions
once, not once per task. Results come back in task order, whatever the executor and
the number of workers, so a sweep is deterministic.

* ``workers=1``: in this process, no pool (the default; also what tests use).
* ``executor="local"``: a ``concurrent.futures.ProcessPoolExecutor`` (spawn context,
  so onnxruntime's threads are never forked), ``shared`` sent once per worker.
* ``executor="ray"``: Ray tasks on the cluster ``ray.init(address=...)`` finds (a local
  one when none is running); ``shared`` is put in the object store once and each
  Ray worker keeps its state in an actor. Ray is an optional extra
  (``pip install onnxprune[ray]``).

``fn`` and ``init`` must be module-level functions (they are pickled by name).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from onnxprune.errors import UsageError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")

_STATE: dict[str, Any] = {}


def _worker_init(init: Callable[[Any], Any], shared: Any) -> None:
    _STATE["state"] = init(shared)


def _worker_run(fn: Callable[[Any, Any], Any], task: Any) -> Any:
    return fn(_STATE["state"], task)


@dataclass
class SweepStats:
    tasks: int = 0
    workers: int = 1
    executor: str = "inline"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "workers": self.workers, "executor": self.executor,
                "seconds": round(self.seconds, 3)}


def run_tasks(fn: Callable[[Any, Any], Any], tasks: Sequence[Any], *, init: Callable[[Any], Any],
              shared: Any, workers: int = 1, executor: str = "local",
              progress: Callable[[int, int], None] | None = None) -> tuple[list[Any], SweepStats]:
    """``[fn(init(shared), t) for t in tasks]``, on ``workers`` processes; results in task order."""
    if executor not in EXECUTORS:
        raise UsageError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    t0 = time.perf_counter()
    tasks = list(tasks)
    if executor == "ray":
        results = _run_ray(fn, tasks, init, shared, workers, progress)
        kind = "ray"
    elif workers == 1 or len(tasks) <= 1:
        state = init(shared)
        results = []
        for i, t in enumerate(tasks):
            results.append(fn(state, t))
            if progress:
                progress(i + 1, len(tasks))
        kind, workers = "inline", 1
    else:
        ctx = mp.get_context("spawn")
        n = min(workers, len(tasks))
        results = []
        kind, workers = "local", n
        try:
            with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_worker_init,
                                     initargs=(init, shared)) as pool:
                futures = [pool.submit(_worker_run, fn, t) for t in tasks]
                for i, f in enumerate(futures):
                    results.append(f.result())
                    if progress:
                        progress(i + 1, len(tasks))
        except BrokenProcessPool as exc:
            # A worker died (killed for memory, most often): finish the remaining tasks here,
            # in order, so the sweep still completes with the same results.
            log.warning("process pool broke after %d of %d tasks (%s); running the rest in this process",
                        len(results), len(tasks), exc)
            state = init(shared)
            for t in tasks[len(results):]:
                results.append(fn(state, t))
                if progress:
                    progress(len(results), len(tasks))
            kind = "local+inline (pool broke)"
    return results, SweepStats(len(tasks), workers, kind, time.perf_counter() - t0)


def _run_ray(fn: Callable[[Any, Any], Any], tasks: list[Any], init: Callable[[Any], Any], shared: Any,
             workers: int, progress: Callable[[int, int], None] | None) -> list[Any]:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'onnxprune[ray]'") from None
    if not ray.is_initialized():
        ray.init(num_cpus=None, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    shared_ref = ray.put(shared)

    class _Worker:
        def __init__(self, shared_obj: Any) -> None:
            self.state = init(shared_obj)

        def run(self, task: Any) -> Any:
            return fn(self.state, task)

    # ray.remote's types do not say that the class it returns has .remote
    actor_cls: Any = ray.remote(_Worker)
    actors = [actor_cls.remote(shared_ref) for _ in range(min(workers, max(len(tasks), 1)))]
    refs = [actors[i % len(actors)].run.remote(t) for i, t in enumerate(tasks)]
    results = []
    for i, r in enumerate(refs):
        results.append(ray.get(r))
        if progress:
            progress(i + 1, len(tasks))
    for a in actors:
        ray.kill(a)
    return results
