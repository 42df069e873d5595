"""Where an audit's independent training jobs run: a local process pool (default) or Ray.

Each job is a top-level function applied to a small dict, so it pickles to any
worker. Jobs are keyed by their inputs and write their own result files, so the
caller can skip finished ones and a killed audit resumes without retraining.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

BACKENDS = ("local", "ray")


def exit_with_parent(parent_pid: int, every: float = 0.5) -> None:
    """A pool worker's initializer: a daemon thread ends the worker when its parent is gone.

    A parent killed with SIGKILL cannot stop its pool, and a worker busy training never reads
    the pool's closed pipe, so each worker watches its parent itself (POSIX reparents an orphan,
    which changes ``os.getppid()``).
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="dpplat-exit-with-parent", daemon=True).start()


class LocalBackend:
    """A process pool on this machine (``workers=1`` runs the jobs inline, in this process)."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1

    def map(self, fn: Callable[[dict], Any], jobs: list[dict]) -> list[Any]:
        if not jobs:
            return []
        workers = min(self.workers, len(jobs))
        if workers == 1:
            return [fn(job) for job in jobs]
        threads = max(1, (os.cpu_count() or 1) // workers)
        jobs = [{**job, "threads": threads} for job in jobs]
        # spawn, not fork: a forked child of a process whose torch thread pool is running can deadlock.
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=exit_with_parent,
                                   initargs=(os.getpid(),))
        try:
            return list(pool.map(fn, jobs))
        except BaseException:
            # Ctrl+C, SIGTERM or a failed job: stop the others now rather than wait for their jobs to finish.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class RayBackend:
    """Ray tasks; starts a local Ray instance unless ``address`` names a cluster."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_job: float = 1.0) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("the ray backend needs Ray: pip install 'dpplat[ray]' (or use --backend local).") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        self.cpus_per_job = cpus_per_job

    def map(self, fn: Callable[[dict], Any], jobs: list[dict]) -> list[Any]:
        remote = self.ray.remote(num_cpus=self.cpus_per_job)(run_with_import_folders)
        folders = import_folders()
        return self.ray.get([remote.remote(fn, folders, {**job, "threads": 1}) for job in jobs])


def import_folders() -> list[str]:
    """This process's import folders as absolute paths (its current folder for ``""``).

    A Ray worker starts in its own folder with its own ``sys.path``; these let it import what the
    driver imports, such as a user's model module in the folder dpplat was started from (spawned
    processes get the same from multiprocessing).
    """
    return [os.path.abspath(p or os.getcwd()) for p in sys.path]


def run_with_import_folders(fn: Callable[[dict], Any], folders: list[str], job: dict) -> Any:
    """``fn(job)`` after appending the driver's import folders that this worker lacks."""
    sys.path.extend(p for p in folders if p not in sys.path)
    return fn(job)


def make_backend(name: str, **kwargs) -> LocalBackend | RayBackend:
    if name == "local":
        return LocalBackend(kwargs.get("workers"))
    if name == "ray":
        return RayBackend(kwargs.get("address"))
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}.")
