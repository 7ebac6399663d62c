"""The engines a run-level job can run on, by name (``--engine``, ``engine = "..."``).

- ``inprocess`` (default): every unit in this process (:class:`~.engine.InProcessEngine`).
- ``ray``: Ray actors on this machine or a cluster (:class:`~.ray_engine.RayEngine`; needs
  ``pip install concilium[ray]``).

Adding an engine: a class with ``name`` and ``run(work, units, on_result)`` (see
:class:`~.engine.Engine`), registered here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Literal

from concilium._registry import Registry
from concilium.jobs.engine import Engine, InProcessEngine
from concilium.jobs.ray_engine import RayEngine

EngineName = Literal["inprocess", "ray"]

ENGINES: Registry[Callable[..., Engine]] = Registry("engine")
ENGINES.add("inprocess", InProcessEngine)
ENGINES.add("ray", RayEngine)


def make_engine(name: str = "inprocess", *, address: str | None = None,
                workers: int | None = None) -> Engine:
    """The engine called ``name``.

    Args:
        name: a name of :data:`ENGINES`.
        address: the cluster to join (Ray only; ``None``: a local instance).
        workers: number of workers (Ray only; default: one per GPU or CPU).

    Raises:
        ValueError: an unknown name (listing the valid ones), or ``address``/``workers`` given
            to an engine without them (the in-process one).
        ImportError: ``ray`` asked for without Ray installed, naming ``pip install
            concilium[ray]``.
    """
    factory = ENGINES.get(name)
    given = {k: v for k, v in (("address", address), ("workers", workers)) if v is not None}
    takes = inspect.signature(factory).parameters
    unknown = [f"--{k}" for k in given if k not in takes]
    if unknown:
        raise ValueError(f"{' and '.join(unknown)} are not options of the {name} engine; add "
                         "--engine ray or drop them")
    return factory(**given)
