"""Where the runs of a sweep execute: this process, local worker processes, or a Dask cluster.

All three take the same :class:`Task` (a key, a function and its argument) and hand back each result as
it arrives, so the sweep driver (:mod:`labkit.sweep.core`) is one piece of code for all of them:

* :class:`SequentialExecutor` runs tasks one after another in this process (tiny grids, tests, debugging);
* :class:`LocalExecutor` keeps one worker process per core (the default), forked from a server process that
  has imported torch and labkit once (``forkserver``; ``spawn`` where there is none). It knows which task
  each worker holds, so a worker that dies (killed, out of memory) costs exactly that task a
  :class:`WorkerLost`, and a fresh worker takes its place;
* :class:`DaskExecutor` submits to a Dask ``distributed`` cluster: a :class:`~distributed.LocalCluster`
  it starts on 127.0.0.1, or any cluster given by its scheduler address (``tcp://host:8786``).

Workers only compute: they return the :class:`~labkit.runs.Run` to the driver, which saves it. So workers
on other machines need labkit installed, not access to the runs folder. A :class:`LocalExecutor` worker
watches its driver and exits within a second when the driver is gone (killed), instead of training on for
nobody.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing import connection
from typing import Any, ClassVar, Self

from labkit.config import ConfigError, RunConfig
from labkit.runs import Run, process_alive, process_identity

EXECUTORS = ("sequential", "local", "gpu", "dask")
INSTALL_DASK = "pip install 'labkit[distributed]' (or: pip install 'dask[distributed]')"


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(arg)``, identified by ``key``; ``attempt`` counts from 1."""

    key: str
    fn: Callable[[Any], Any]
    arg: Any
    attempt: int = 1

    def retry(self) -> Task:
        return replace(self, attempt=self.attempt + 1)


class WorkerLost(RuntimeError):
    """The process running a task died (killed, out of memory, machine lost) before returning a result."""


def run_config(config: dict[str, Any]) -> Run:
    """Train the run described by ``config`` (a ``RunConfig.to_dict()``) here and return its record.

    Never raises for a failing run: the Trainer records status ``failed``, the error and its traceback on
    the run, which is returned like any other. (On CUDA the Trainer resets the peak-memory counter at the
    start of each run, so each run's ``mem_cuda_peak`` is its own even when a worker trains many runs.)
    """
    from labkit.train import Trainer  # the engine (and torch) load when the first run starts

    start = time.perf_counter()
    trainer = Trainer(RunConfig.from_dict(config))
    with contextlib.suppress(Exception):  # the Trainer recorded it on trainer.run: status, error, traceback
        trainer.train()
    run = trainer.run
    run.info.update(worker=f"{socket.gethostname()}:{os.getpid()}", seconds=time.perf_counter() - start)
    return run


def noop(value: Any) -> Any:
    """Return ``value``: a task that measures an executor's own overhead."""
    return value


class Executor(ABC):
    """Runs :class:`Task` objects and returns ``(task, result or exception)`` pairs as they finish.

    Use as a context manager (``with LocalExecutor() as ex:``), which starts the workers and, on leaving,
    stops them; on an exception (Ctrl-C) pending tasks are cancelled and busy workers terminated.
    """

    name: ClassVar[str]

    @property
    @abstractmethod
    def workers(self) -> int:
        """How many tasks run at once."""

    @property
    @abstractmethod
    def pending(self) -> int:
        """Tasks submitted whose results have not been returned yet."""

    @abstractmethod
    def start(self) -> None:
        """Start the workers (called by ``__enter__``; idempotent)."""

    @abstractmethod
    def submit(self, task: Task) -> None:
        """Queue ``task``; its result comes back from :meth:`next_result`."""

    @abstractmethod
    def next_result(self) -> tuple[Task, Any]:
        """Block until a task ends; return it with its result, or with the exception that ended it
        (:class:`WorkerLost` when its worker died)."""

    @abstractmethod
    def close(self, cancel: bool = False) -> None:
        """Stop the workers; with ``cancel``, drop pending tasks and terminate busy workers."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(cancel=exc_type is not None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workers={self.workers})"


class SequentialExecutor(Executor):
    """Runs each task in this process when its result is asked for: no start-up cost, no parallelism."""

    name = "sequential"

    def __init__(self) -> None:
        self._queue: deque[Task] = deque()

    @property
    def workers(self) -> int:
        return 1

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Nothing to start: tasks run in this process."""

    def submit(self, task: Task) -> None:
        self._queue.append(task)

    def next_result(self) -> tuple[Task, Any]:
        task = self._queue.popleft()
        try:
            return task, task.fn(task.arg)
        except Exception as exc:
            return task, exc

    def close(self, cancel: bool = False) -> None:
        self._queue.clear()


_READY = "labkit-worker-ready"  # a worker's first message: it has started


class WorkerStartError(RuntimeError):
    """Worker processes die before they are ready: the sweep cannot run on this executor."""


DRIVER_CHECK_SECONDS = 1.0


def _exit_when_gone(driver: dict[str, Any]) -> None:
    """Exit this worker process as soon as its driver process is gone (a thread of the worker)."""
    while True:
        time.sleep(DRIVER_CHECK_SECONDS)
        if process_alive(driver) is False:
            os._exit(3)


def _worker_main(conn: connection.Connection, driver: dict[str, Any] | None = None, gpu: int | None = None) -> None:
    """Loop of a :class:`LocalExecutor` worker: receive a task, send back its result, until told to stop
    (or until the ``driver`` process dies: its pipe may stay open in a forkserver, so it is watched).

    ``gpu``: the CUDA device this worker's runs use (``device='cuda'`` means the current device).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the driver, which stops the workers
    if driver is not None:
        threading.Thread(target=_exit_when_gone, args=(driver,), name="labkit-driver-watch", daemon=True).start()
    import torch

    import labkit.train  # noqa: F401  (already loaded when forked from the warm server; imported now under spawn)

    torch.set_num_threads(1)  # one core per worker; a run sets its own count from config.threads
    if gpu is not None:
        torch.cuda.set_device(gpu)
    conn.send(_READY)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the driver is gone
            return
        if task is None:
            return
        try:
            result: Any = task.fn(task.arg)
        except Exception as exc:
            result = exc
        try:
            conn.send(result)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # a result that cannot travel
            conn.send(RuntimeError(f"the result of task {task.key} cannot be sent back: {exc}"))


def _process_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` with torch and labkit preloaded (workers start in milliseconds), else ``spawn``.

    Never plain ``fork``: forking a process that has threads (a Jupyter kernel, a Dask client) or CUDA
    is unsafe. Workers forked from the server run the labkit code it imported when it started (once per
    Python process): after editing labkit's source, restart the kernel.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["labkit.sweep._warmup"])
        return context
    return multiprocessing.get_context("spawn")


class _Worker:
    """One worker process, its end of the pipe, and the task it holds (None when idle)."""

    def __init__(self, context: multiprocessing.context.BaseContext, gpu: int | None = None) -> None:
        self.conn, child = context.Pipe()
        self.gpu = gpu
        self.process = context.Process(target=_worker_main, args=(child, process_identity(), gpu), daemon=True,
                                       name="labkit-sweep-worker")
        self.process.start()
        child.close()
        self.task: Task | None = None

    def stop(self, terminate: bool) -> None:
        if terminate:
            self.process.terminate()
        else:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class LocalExecutor(Executor):
    """A pool of worker processes on this machine (default: one per core), one task per worker at a time.

    Each worker holds at most one task, so when a worker dies the driver knows which task it lost, returns
    :class:`WorkerLost` for that task only, and starts a replacement worker. With ``gpus`` (CUDA device
    indices) there is one worker per GPU, each pinned to its own device (runs with ``device='cuda'``).
    """

    name = "local"

    def __init__(self, workers: int | None = None, gpus: Sequence[int] | None = None) -> None:
        self._gpus = list(gpus) if gpus is not None else None
        if self._gpus is not None and workers is None:
            workers = len(self._gpus)
        self._size = (os.cpu_count() or 1) if workers is None else workers
        if self._size < 1:
            raise ConfigError(f"workers must be positive, got {workers}")
        self._context = _process_context()
        self._workers: list[_Worker] = []
        self._queue: deque[Task] = deque()
        self._started = False  # some worker reported ready: later deaths are lost tasks, not a broken set-up

    @property
    def workers(self) -> int:
        return self._size

    @property
    def pending(self) -> int:
        return len(self._queue) + sum(w.task is not None for w in self._workers)

    def _gpu_of(self, slot: int) -> int | None:
        return None if not self._gpus else self._gpus[slot % len(self._gpus)]

    def start(self) -> None:
        while len(self._workers) < self._size:
            self._workers.append(_Worker(self._context, self._gpu_of(len(self._workers))))

    def running(self) -> dict[int, str]:
        """``{worker pid: task key}`` of the busy workers."""
        return {w.process.pid: w.task.key for w in self._workers if w.task is not None and w.process.pid}

    def submit(self, task: Task) -> None:
        self.start()
        self._queue.append(task)
        self._dispatch()

    def _dispatch(self) -> None:
        for i, worker in enumerate(self._workers):
            if not self._queue:
                return
            if worker.task is not None:
                continue
            if not worker.process.is_alive():  # died while idle
                worker.stop(terminate=True)
                worker = self._workers[i] = _Worker(self._context, worker.gpu)
            worker.task = self._queue.popleft()
            with contextlib.suppress(OSError):  # it died after the check: the next wait() sees it and says so
                worker.conn.send(worker.task)

    def next_result(self) -> tuple[Task, Any]:
        while True:
            busy = [w for w in self._workers if w.task is not None]
            if not busy:
                raise RuntimeError("next_result() with no task pending")
            ready = set(connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            worker = next(w for w in busy if w.conn in ready or w.process.sentinel in ready)
            task = worker.task
            assert task is not None
            result = self._collect(worker)
            if result is _READY:
                continue
            self._dispatch()
            return task, result

    def _collect(self, worker: _Worker) -> Any:
        """The next message of a busy worker (``_READY`` or its task's result), or WorkerLost if it died."""
        try:
            if worker.conn.poll():
                message = worker.conn.recv()
                if isinstance(message, str) and message == _READY:
                    self._started = True
                    return _READY
                worker.task = None
                return message
        except (EOFError, OSError):
            pass
        worker.process.join(timeout=5)
        code = worker.process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        if not self._started:
            raise WorkerStartError(
                f"a worker process died while starting ({how}). In a script, put the code that runs the sweep "
                "under `if __name__ == \"__main__\":` (each worker process imports your script), "
                "or use executor=\"sequential\" to see the error in this process.")
        lost = WorkerLost(f"worker process {worker.process.pid} died ({how}) while running task {worker.task.key}")
        worker.stop(terminate=True)
        self._workers[self._workers.index(worker)] = _Worker(self._context, worker.gpu)
        return lost

    def close(self, cancel: bool = False) -> None:
        self._queue.clear()
        for worker in self._workers:
            worker.stop(terminate=cancel or worker.task is not None)
        self._workers = []


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"the dask executor needs Dask's distributed scheduler: {INSTALL_DASK}") from exc
    return distributed


def _local_cluster(distributed: Any, workers: int) -> Any:
    """A LocalCluster of ``workers`` one-thread processes on 127.0.0.1, tuned for training runs.

    Each worker imports torch and labkit as it starts (:mod:`labkit.sweep._warmup`), like the local pool's.
    Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so that freed memory returns to the system at
    once; PyTorch frees and reallocates tensors every step, and that setting made the same run 10-60%
    slower in a Dask worker here. It is left out for this cluster (a cluster you start keeps your settings).
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                        dashboard_address=None, silence_logs=logging.ERROR,
                                        preload=["labkit.sweep._warmup"])


class DaskExecutor(Executor):
    """Runs tasks on a Dask ``distributed`` cluster.

    ``DaskExecutor()`` starts a :class:`~distributed.LocalCluster` of ``workers`` processes (default: one
    per core, one thread each) on 127.0.0.1 and shuts it down on close. ``DaskExecutor("tcp://host:8786")``
    connects to a running scheduler (started with ``dask scheduler`` and ``dask worker tcp://host:8786``
    on the machines, each with labkit installed); ``DaskExecutor(client=client)`` uses your own client.
    Dask reschedules the tasks of a worker that dies; a task whose workers keep dying comes back as
    :class:`WorkerLost`.
    """

    name = "dask"

    def __init__(self, address: str | None = None, workers: int | None = None, *, client: Any = None) -> None:
        if client is None:
            _import_distributed()  # missing: refused now, before a sweep registers anything
        self.address = address
        self._size = workers or os.cpu_count() or 1
        self._client = client
        self._own_client = client is None
        self._cluster: Any = None
        self._completed: Any = None
        self._futures: dict[str, tuple[Any, Task]] = {}

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` (after :meth:`start`)."""
        return self._client

    @property
    def workers(self) -> int:
        if self._client is None:
            return self._size
        return max(1, sum(self._client.nthreads().values()))

    @property
    def pending(self) -> int:
        return len(self._futures)

    def start(self) -> None:
        distributed = _import_distributed()
        if self._client is None:
            if self.address is None:
                self._cluster = _local_cluster(distributed, self._size)
                self._client = distributed.Client(self._cluster)
            else:
                self._client = distributed.Client(self.address)
        if self._completed is None:
            self._completed = distributed.as_completed()

    def submit(self, task: Task) -> None:
        self.start()
        future = self._client.submit(task.fn, task.arg, key=f"labkit-{task.key}-{task.attempt}-{os.urandom(4).hex()}",
                                     pure=False)
        self._futures[future.key] = (future, task)
        self._completed.add(future)

    def next_result(self) -> tuple[Task, Any]:
        if not self._futures:
            raise RuntimeError("next_result() with no task pending")
        distributed = _import_distributed()
        future = next(self._completed)
        _, task = self._futures.pop(future.key)
        try:
            return task, future.result()
        except distributed.KilledWorker as exc:
            return task, WorkerLost(f"Dask workers died while running task {task.key}: {exc}")
        except Exception as exc:
            return task, exc
        finally:
            future.release()

    def close(self, cancel: bool = False) -> None:
        if self._client is not None and self._futures:
            self._client.cancel([future for future, _ in self._futures.values()])
        self._futures.clear()
        self._completed = None
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __repr__(self) -> str:
        where = self.address or ("your client" if not self._own_client else "LocalCluster on 127.0.0.1")
        return f"DaskExecutor({where}, workers={self.workers})"


def cuda_devices() -> list[int]:
    """Indices of the visible CUDA devices; ``ConfigError`` when there are none (for ``executor="gpu"``)."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise ConfigError("executor='gpu' runs one worker per CUDA GPU, and PyTorch sees none; "
                          "use executor='local' (CPU cores) or run on a machine with a GPU")
    return list(range(count))


def make_executor(executor: str | Executor | None = "local", workers: int | None = None) -> Executor:
    """An executor from a name, a Dask scheduler address or a ``distributed.Client``.

    ``"sequential"``, ``"local"`` (default), ``"gpu"`` (one worker per CUDA GPU, each pinned to its device;
    give the grid ``device='cuda'``), ``"dask"`` (a local Dask cluster), ``"tcp://host:8786"`` or
    ``"host:8786"`` (a running Dask scheduler); an :class:`Executor` is returned as it is.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if isinstance(executor, Executor):
        return executor
    if executor is None or executor == "local":
        return LocalExecutor(workers)
    if executor == "sequential":
        return SequentialExecutor()
    if executor == "gpu":
        return LocalExecutor(workers, gpus=cuda_devices())
    if executor == "dask":
        return DaskExecutor(workers=workers)
    if isinstance(executor, str) and ("://" in executor or executor.rpartition(":")[2].isdigit()):
        return DaskExecutor(executor, workers)
    if type(executor).__name__ == "Client" and hasattr(executor, "scheduler_info"):
        return DaskExecutor(client=executor)
    raise ConfigError(f"executor={executor!r} is not valid; choose one of {', '.join(EXECUTORS)}, "
                      "or give a Dask scheduler address such as tcp://10.0.0.5:8786")
