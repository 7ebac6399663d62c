"""The Ray engine: a job's units on a pool of Ray actors, on one machine or a cluster.

Each actor calls the job's ``setup()`` once (the data and the models are loaded once per worker)
and then ``step(unit)`` for every unit it is given; the driver keeps at most two units in flight
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
import os
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


def ray_available() -> bool:
    """Whether Ray can be imported here."""
    return ray is not None


class _Worker:
    """The actor body: one job's state, built once."""

    def __init__(self, work: Any, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        self.work = work
        self.state = work.setup()

    def step(self, unit: Any) -> Any:
        return self.work.step(self.state, unit)

    def pid(self) -> int:
        return os.getpid()


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
        self.actors: list[Any] = []  # the live actors of the current run (tests kill one)

    def __repr__(self) -> str:
        return f"RayEngine(address={self.address!r}, workers={self.workers})"

    def _connect(self) -> None:
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=True,
                     configure_logging=False)

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

    def run(self, work: Work[U, R], units: Sequence[U],
            on_result: Callable[[U, R], None]) -> None:
        if not units:
            return
        self._connect()
        n, cpus, gpus = self._resources(work)
        n = min(n, len(units))
        if gpus and dataclasses.is_dataclass(work):
            work = dataclasses.replace(work, device="cuda")  # the actor's own GPU is cuda:0
        actor_class = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=self.retries,
                                 max_task_retries=self.retries)(_Worker)
        work_ref = ray.put(work)  # shipped once, deserialised once per actor
        self.actors = [actor_class.remote(work_ref, int(cpus)) for _ in range(n)]
        todo: deque[tuple[U, int]] = deque((u, 0) for u in units)
        running: dict[Any, tuple[Any, U, int]] = {}  # future -> (actor, unit, attempt)
        load = {id(a): 0 for a in self.actors}
        try:
            while todo or running:
                for actor in list(self.actors):
                    while todo and load[id(actor)] < 2:
                        unit, attempt = todo.popleft()
                        running[actor.step.remote(unit)] = (actor, unit, attempt)
                        load[id(actor)] += 1
                if not self.actors:
                    raise RuntimeError("every Ray worker died; see the Ray logs "
                                       "(/tmp/ray/session_latest/logs) for why")
                (ready,), _ = ray.wait(list(running), num_returns=1)
                actor, unit, attempt = running.pop(ready)
                load[id(actor)] -= 1
                try:
                    result = ray.get(ready)
                except RayActorError:
                    # the actor is gone for good (restarts used up): give its unit to the others
                    if attempt >= self.retries:
                        raise
                    self.actors = [a for a in self.actors if a is not actor]
                    todo.append((unit, attempt + 1))
                    continue
                except RayTaskError as err:
                    raise err.as_instanceof_cause() from None
                on_result(unit, result)
        finally:  # killing an actor ends its unit in flight (its chunk stays unmarked)
            for actor in self.actors:
                ray.kill(actor, no_restart=True)
            self.actors = []
