"""Engines that run :func:`ulmed.pipeline.work.process_batch` over a run's units.

* ``local`` with one worker runs in this process;
* ``local`` with N workers runs here and in N - 1 spawned processes (each with ``cpu_count / N`` torch threads);
* ``ray`` sends batches as Ray tasks to a local or existing cluster (``--ray-address``).

Every engine yields the results in the order of the units, with a bounded number of
batches in flight, so memory stays flat however long the run is, and the journal is
written in the same order whatever the engine. Results do not depend on the engine:
every method derives its randomness from the run seed and the record key.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

from ulmed.choices import StrEnum, look_up, names
from ulmed.errors import ConfigError, MissingDependencyError, UlmedError
from ulmed.pipeline.units import Unit
from ulmed.pipeline.work import UnitResult, WorkContext, process_batch, process_stream

log = logging.getLogger("ulmed")


class Engine(StrEnum):
    """Where the units run (``--engine``)."""

    LOCAL = "local"
    RAY = "ray"


#: The engine names, in order (help texts).
ENGINES = names(Engine)
RAY_HINT = 'the Ray engine needs Ray: pip install "ulmed[ray]"'


@dataclass(frozen=True)
class EngineConfig:
    """How to run the units.

    Args:
        name: ``local`` or ``ray`` (an :class:`Engine`; text is looked up).
        workers: Worker processes (local) or concurrent tasks (Ray).
        batch_size: Units per task.
        ray_address: Address of an existing Ray cluster (None: start a local one).
    """

    name: Engine | str = Engine.LOCAL
    workers: int = 1
    batch_size: int = 4
    ray_address: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", look_up(self.name, Engine, "--engine"))
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.batch_size < 1:
            raise ConfigError(f"engine batch size must be >= 1, got {self.batch_size}")
        if self.ray_address is not None and self.name is not Engine.RAY:
            raise ConfigError("--ray-address needs --engine ray")


def _batches(units: Sequence[Unit], size: int) -> list[list[Unit]]:
    """Consecutive units in batches of at most ``size`` units and, past its first unit, ``size`` files.

    A series of many files is a batch of its own, so that workers share a DICOM export's series
    evenly (four 25-slice series in one task left one worker with most of the export); single
    images still travel ``size`` at a time.
    """
    batches: list[list[Unit]] = []
    files = 0
    for unit in units:
        n = len(unit.files)
        if batches and len(batches[-1]) < size and files + n <= size:
            batches[-1].append(unit)
            files += n
        else:
            batches.append([unit])
            files = n
    return batches


def _task_size(config: EngineConfig, ctx: WorkContext) -> int:
    """Units per worker or Ray task: the engine's batch size, or the method's ``batch_hint`` if larger."""
    return max(config.batch_size, ctx.method.batch_hint)


_WORKER_CONTEXT: WorkContext | None = None


def _init_worker(ctx: WorkContext, threads: int) -> None:
    """Give the worker its share of the cores, for torch loaded now or later, and its context.

    A method that loads torch only when a record needs it would otherwise start one OpenMP
    thread per core in every worker: two workers on two cores ran a PNG data set 3x slower than
    one when lsp's pre-image still ran on torch. OpenMP reads ``OMP_NUM_THREADS`` when torch loads.
    """
    global _WORKER_CONTEXT
    _exit_with(os.getppid())
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")  # already loaded by methods that need it at once (em, salm, unseg)
    if torch is not None:
        torch.set_num_threads(threads)
    _WORKER_CONTEXT = ctx


#: Seconds between a worker's looks at whether the process that spawned it is still there.
PARENT_POLL_S = 1.0


def _exit_with(parent: int) -> None:
    """End this worker process soon after ``parent`` is gone.

    A killed run (``kill -9``, an out-of-memory kill) cannot shut its pool down, and a worker
    waiting for its next task would wait forever; orphaned, it is handed to another parent.
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="ulmed-parent-watch", daemon=True).start()


def _worker_batch(units: list[Unit]) -> list[UnitResult]:
    assert _WORKER_CONTEXT is not None, "worker not initialised"
    return process_batch(units, _WORKER_CONTEXT)


def _ordered(submit: Any, batches: list[list[Unit]], in_flight: int, result: Any) -> Iterator[UnitResult]:
    """Submit batches keeping at most ``in_flight`` pending; yield results in order."""
    pending: deque[Any] = deque()
    todo = iter(batches)
    for batch in todo:
        pending.append(submit(batch))
        if len(pending) >= in_flight:
            break
    while pending:
        done = result(pending.popleft())
        nxt = next(todo, None)
        if nxt is not None:
            pending.append(submit(nxt))
        yield from done


def run_local(units: Sequence[Unit], ctx: WorkContext, config: EngineConfig) -> Iterator[UnitResult]:
    """Run in this process (one worker), or here and in ``workers - 1`` spawned worker processes.

    In this process the units go to :func:`process_stream` (``ctx.method.batch_hint`` at a time,
    one for most methods, the next group read in a thread meanwhile), so a method that batches
    across records gets its batches while memory stays bounded; a worker's task holds at least
    that many units too. With N workers this process is one of them (:func:`_shared`): it
    starts on the first batches while the spawned ones still import, and no core waits on a
    parent that only collects results.
    """
    if config.workers == 1 or len(units) <= 1:
        yield from process_stream(list(units), ctx)
        return
    threads = max(1, (os.cpu_count() or 1) // config.workers)
    batches = _batches(units, _task_size(config, ctx))
    spawned = config.workers - 1
    with ProcessPoolExecutor(spawned, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(ctx, threads)) as pool, _torch_threads(threads):
        yield from _shared(batches, lambda b: pool.submit(_worker_batch, b), lambda b: process_batch(b, ctx),
                           2 * spawned)


def _shared(batches: list[list[Unit]], submit: Callable[[list[Unit]], Future[list[UnitResult]]],
            here: Callable[[list[Unit]], list[UnitResult]], in_flight: int) -> Iterator[UnitResult]:
    """Run each batch in the pool while it has fewer than ``in_flight`` pending, else here; results in order.

    A batch run here is held until the batches before it are back, so the journal keeps the
    order of the units; what is held is manifest entries, not images.
    """
    held: dict[int, Future[list[UnitResult]] | list[UnitResult]] = {}
    out = 0
    for i, batch in enumerate(batches):
        pending = sum(1 for r in held.values() if isinstance(r, Future) and not r.done())
        held[i] = submit(batch) if pending < in_flight else here(batch)
        while out in held and not (isinstance(held[out], Future) and not held[out].done()):
            yield from _value(held.pop(out))
            out += 1
    while out in held:
        yield from _value(held.pop(out))
        out += 1


def _value(got: Future[list[UnitResult]] | list[UnitResult]) -> list[UnitResult]:
    return got.result() if isinstance(got, Future) else got


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """This process's torch threads set to its share of the cores for the block (when torch is loaded).

    Not :func:`ulmed.core.device.threads`: that module imports torch, which a training-free run never loads.
    """
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch is not None and before is not None:
            torch.set_num_threads(before)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(RAY_HINT) from None
    return ray


def run_ray(units: Sequence[Unit], ctx: WorkContext, config: EngineConfig) -> Iterator[UnitResult]:
    """Run batches as Ray tasks, on a local Ray instance or the cluster at ``ray_address``.

    A local instance started here gets ``workers`` CPUs and is shut down at the end; an
    existing cluster (``ray_address``) is joined and left running. Tasks ask for one GPU
    each when the method runs on CUDA, so Ray places one task per GPU.
    """
    ray = _ray()
    started = False
    if not ray.is_initialized():
        try:
            if config.ray_address is None:
                ray.init(num_cpus=config.workers, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            else:
                ray.init(address=config.ray_address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UlmedError(f"cannot start or join Ray ({exc}); check --ray-address") from exc
        started = True
    try:
        gpus = 1 if str(ctx.method.device).startswith("cuda") else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus)(process_batch)
        ctx_ref = ray.put(ctx)
        batches = _batches(units, _task_size(config, ctx))
        yield from _ordered(lambda b: task.remote(b, ctx_ref), batches, 2 * config.workers, ray.get)
    finally:
        if started:
            ray.shutdown()


def run_units(units: Sequence[Unit], ctx: WorkContext, config: EngineConfig) -> Iterator[UnitResult]:
    """Run ``units`` with the configured engine; results come in the order of ``units``."""
    if not units:
        return iter(())
    if config.name is Engine.RAY:
        return run_ray(units, ctx, config)
    return run_local(units, ctx, config)


__all__ = ["ENGINES", "Engine", "EngineConfig", "run_units"]
