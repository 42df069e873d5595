"""``dpplat train --nproc N``: data-parallel DP training on one machine with torch.distributed.

Each of N processes runs the ordinary training loop over the whole dataset; the engine
shares out one global Poisson sample per step and adds the noise once (on rank 0) before
the all-reduce (see :class:`dpplat.engine.optimizer.DPOptimizer`). Rank 0 alone writes the
store and the checkpoints and evaluates. For several hosts, start the same loop with
``torchrun`` (see the README); this launcher is the single-host shortcut.
"""

from __future__ import annotations

import argparse

import contextlib
import dataclasses
import datetime
import os
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dpplat.devices import rank_device
from dpplat.training import TrainConfig, train

TIMEOUT = datetime.timedelta(seconds=120)  # a dead rank stops the others within this time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, config: dict, store_path: str, quiet: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    config = {**config, "device": rank_device(config["device"], rank)}
    dist.init_process_group(_backend(config["device"]), rank=rank, world_size=world, timeout=TIMEOUT)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    _run_rank(rank, world, config, store_path, quiet)


def _backend(device: str) -> str:
    """gloo for a CPU run (NCCL cannot reduce CPU tensors, even on a GPU machine); for a CUDA run NCCL
    for the gradients on the GPUs and gloo for the CPU tensors (the Poisson sample's mask, the released
    data statistics), which torch dispatches by the tensor's device. Not yet run on several GPUs."""
    return "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo"


def _run_rank(rank: int, world: int, config: dict, store_path: str, quiet: bool) -> None:
    """The training loop of one rank of an initialised process group; rank 0 stores and reports."""
    import warnings

    from dpplat.store import RunStore

    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")  # Opacus's RDP hint
    try:
        store = RunStore(store_path) if rank == 0 else NullStore(store_path)
        result = train(TrainConfig(**config), store=store, quiet=quiet, main_process=rank == 0)
        if rank == 0:
            print(f"run {result.run_id}: accuracy {result.accuracy:.4f}, epsilon {result.epsilon:.3f} "
                  f"(delta {result.delta:g}), status {result.status}, {world} processes, store {store.path.resolve()}")
            print(result.statement)
    finally:
        dist.destroy_process_group()


class NullStore:
    """The store of a data-parallel rank other than 0: the run is stored once, by rank 0."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def create_run(self, **_) -> int:
        return 0

    def update_run(self, *_, **__) -> None:
        pass

    def log_step(self, *_, **__) -> None:
        pass

    def charge_step(self, *_, **__) -> None:
        pass

    def add_artifact(self, **_) -> int:
        return 0

    def heartbeat(self, *_) -> contextlib.nullcontext:
        return contextlib.nullcontext()


class RankFailed(RuntimeError):
    """A rank of a data-parallel run died or raised; the run is marked interrupted in the store."""


def launch(config: TrainConfig, store_path: str, nproc: int, quiet: bool = False) -> None:
    """Run ``config`` on ``nproc`` local processes; if any rank fails, stop them all and say which."""
    from dpplat.store import RunStore

    if nproc < 2:
        raise ValueError(f"--nproc must be at least 2 for data-parallel training, got {nproc}.")
    config.validate()
    started = time.time()
    try:
        mp.spawn(_rank_main, args=(nproc, _free_port(), dataclasses.asdict(config), str(store_path), quiet),
                 nprocs=nproc, join=True)
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as err:
        # mp.spawn has already stopped the other ranks. SQLite's WAL keeps the store consistent; record the stop.
        with RunStore(store_path) as store:
            for run in store.runs():
                if run.status == "running" and run["started_at"] >= started:
                    store.update_run(run.id, status="interrupted", message=f"a rank failed: {str(err).splitlines()[0]}")
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RankFailed(f"data-parallel training stopped: {first_line}. The run is marked interrupted in "
                         f"{store_path}; start it again (resume runs in one process: --resume RUN_ID).") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``torchrun ... -m dpplat.distributed train [dpplat train flags]`` (several hosts).

    torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; every host must see the
    dataset files, and the store path must be on rank 0's host.
    """
    from dpplat.cli_help import DefaultsFormatter
    from dpplat.store import default_store_path
    from dpplat.train_flags import add_train_arguments, train_config_from_args

    parser = argparse.ArgumentParser(prog="torchrun ... -m dpplat.distributed", formatter_class=DefaultsFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(commands.add_parser("train", formatter_class=DefaultsFormatter,
                                            help="one rank of a data-parallel dpplat train"))
    args = parser.parse_args(argv)
    config = train_config_from_args(args)
    config.device = rank_device(config.device, int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(_backend(config.device), timeout=TIMEOUT)
    _run_rank(dist.get_rank(), dist.get_world_size(), dataclasses.asdict(config),
              str(args.store or default_store_path()), args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
