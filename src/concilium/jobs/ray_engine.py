"""The Ray engine: a job's units on a pool of Ray actors, on one machine or a cluster.

Each actor calls the job's ``setup()`` once (the data and the models are loaded once per worker)
and then ``step(unit)`` for every unit it is given (the actors stay up between the jobs of one
engine: explain then evaluate pay the worker start-up once); the driver keeps at most two units in flight
per actor and hands every result to the job's ``on_result`` in the driver, so the progress
display and the store's done markers have one writer.

Faults: an actor that dies (its process killed, its node lost) is restarted by Ray and the unit it
was computing is retried (``max_restarts``, ``max_task_retries``); when an actor is gone for
good its units go to the others. A unit is safe to compute twice: it writes whole chunks only,
and the driver marks a chunk done after its write returned.

Resources: with ``device`` ``cuda`` every actor asks for one GPU (``num_gpus=1``; Ray gives it
``CUDA_VISIBLE_DEVICES``, so the actor uses ``cuda``); otherwise ``cpus_per_worker`` CPUs, and
torch runs that many threads in the actor.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from concilium.jobs.engine import R, U, Work

try:  # optional: pip install concilium[ray]
    import ray
    from ray.exceptions import RayActorError, RayTaskError
except ImportError:  # pragma: no cover - exercised by test_engines with ray hidden
    ray = None  # type: ignore[assignment]
    RayActorError = RayTaskError = None  # type: ignore[assignment,misc]

RAY_MISSING = ("the ray engine needs Ray, which is not installed; install the extra with "
               "`pip install concilium[ray]` (or drop --engine ray / engine = \"ray\")")


class _Worker:
    """The actor body: a Python process with torch and concilium imported, kept between jobs;
    the state of the job at hand is built once, on its first unit (again after a restart)."""

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        self.token: int | None = None
        self.work: Any = None
        self.state: Any = None

    def step(self, token: int, work_box: list[Any], unit: Any) -> Any:
        if token != self.token:  # a new job, or this actor was restarted
            self.work = ray.get(work_box[0])  # fetched once per actor and job
            self.state = self.work.setup()
            self.token = token
        return self.work.step(self.state, unit)


class RayEngine:
    """Run a job's units on Ray actors.

    Args:
        address: the cluster to join (``ray://head:10001``, ``auto``, ``HOST:PORT``); ``None``
            joins the Ray instance this process already started, or starts a local one.
        workers: number of actors (default: one per GPU when the job runs on ``cuda``, else
            one per ``cpus_per_worker`` CPUs of the cluster).
        cpus_per_worker: CPUs each actor asks for (and torch threads it runs).
        retries: restarts of a dead actor and retries of its unit.

    Raises:
        ImportError: Ray is not installed (the message names ``pip install concilium[ray]``).
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, workers: int | None = None,
                 cpus_per_worker: float = 1.0, retries: int = 3) -> None:
        if ray is None:
            raise ImportError(RAY_MISSING)
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1; got {workers}")
        if cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be positive; got {cpus_per_worker}")
        self.address, self.workers = address, workers
        self.cpus_per_worker, self.retries = cpus_per_worker, retries
        self.actors: list[Any] = []  # live workers, kept between jobs
        self._shape: tuple[float, int] | None = None
        self._jobs = 0

    def __repr__(self) -> str:
        return f"RayEngine(address={self.address!r}, workers={self.workers})"

    def _connect(self) -> None:
        if ray.is_initialized():
            return
        if self.address is not None:
            ray.init(address=self.address)
        else:  # a new local instance for this process, never another process's one
            ray.init(address="local", include_dashboard=False)

    def _resources(self, work: Any) -> tuple[int, float, int]:
        """``(workers, cpus, gpus)`` per actor for this job."""
        cluster = ray.cluster_resources()
        device = str(getattr(work, "device", "cpu"))
        gpus = 1 if device.startswith("cuda") else 0
        if gpus and cluster.get("GPU", 0) < 1:
            raise ValueError(f"the job runs on {device!r} but the Ray cluster has no GPU "
                             f"(resources: {sorted(cluster)}); run on --device cpu or add GPU "
                             "nodes")
        if self.workers is not None:
            n = self.workers
        elif gpus:
            n = int(cluster["GPU"])
        else:
            n = int(cluster.get("CPU", 1) // self.cpus_per_worker)
        return max(1, n), self.cpus_per_worker, gpus

    def _pool(self, n: int, cpus: float, gpus: int) -> list[Any]:
        """``n`` live actors of this shape, started once and kept for the next jobs (a worker
        process imports torch and concilium once: seconds on a busy machine)."""
        if self._shape != (cpus, gpus):
            self.close()
            self._shape = (cpus, gpus)
        actor_class = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=self.retries,
                                 max_task_retries=self.retries,
                                 scheduling_strategy="SPREAD")(_Worker)  # over the nodes
        while len(self.actors) < n:
            self.actors.append(actor_class.remote(int(cpus)))
        return self.actors[:n]

    def close(self) -> None:
        """Stop this engine's workers (also done when the Ray instance shuts down)."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def run(self, work: Work[U, R], units: Sequence[U],
            on_result: Callable[[U, R], None]) -> None:
        if not units:
            return
        self._connect()
        n, cpus, gpus = self._resources(work)
        if gpus and dataclasses.is_dataclass(work):
            work = dataclasses.replace(work, device="cuda")  # the actor's own GPU is cuda:0
        actors = self._pool(min(n, len(units)), cpus, gpus)
        self._jobs += 1
        work_box = [ray.put(work)]  # a ref inside a list: the actor fetches it when it needs it
        todo: deque[tuple[U, int]] = deque((u, 0) for u in units)
        running: dict[Any, tuple[Any, U, int]] = {}  # future -> (actor, unit, attempt)
        load = {id(a): 0 for a in actors}
        died = "none"
        ok = False
        try:
            while todo or running:
                for actor in list(actors):
                    while todo and load[id(actor)] < 2:
                        unit, attempt = todo.popleft()
                        future = actor.step.remote(self._jobs, work_box, unit)
                        running[future] = (actor, unit, attempt)
                        load[id(actor)] += 1
                if not running:
                    raise RuntimeError(f"every Ray worker died (last: {died}); see the Ray "
                                       "logs (/tmp/ray/session_latest/logs) for why")
                (ready,), _ = ray.wait(list(running), num_returns=1)
                actor, unit, attempt = running.pop(ready)
                load[id(actor)] -= 1
                try:
                    result = ray.get(ready)
                except RayActorError as err:
                    # the actor is gone for good (restarts used up): give its unit to the others
                    died = str(err).splitlines()[0] if str(err) else type(err).__name__
                    if attempt >= self.retries:
                        raise
                    actors = [a for a in actors if a is not actor]
                    self.actors = [a for a in self.actors if a is not actor]
                    todo.append((unit, attempt + 1))
                    continue
                except RayTaskError as err:
                    raise err.as_instanceof_cause() from None
                on_result(unit, result)
            ok = True
        finally:
            if not ok:  # units may still run: stop them (their chunks stay unmarked)
                self.close()
