"""The white-box audit's run on several processes: :func:`~dpplat.audits.whitebox.train_with_canaries` on each
rank of a local torch.distributed (gloo) group, with rank 0 observing; ``--inject noise-per-rank`` needs it."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dpplat.audits.whitebox import ObservedRun, WhiteboxConfig, train_with_canaries
from dpplat.distributed import _free_port


def _rank_main(rank: int, world: int, port: int, config: WhiteboxConfig, seed: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        observed = train_with_canaries(config, seed, lambda message: None)
        if rank == 0:
            torch.save(asdict(observed), out)
    finally:
        dist.destroy_process_group()


def train_data_parallel(config: WhiteboxConfig, seed: int, say: Callable[[str], None]) -> ObservedRun:
    """:func:`train_with_canaries` on ``config.processes`` local processes; rank 0 observes."""
    say(f"white-box audit: training on {config.processes} processes (gloo), inject {config.inject}, seed {seed}")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "observed.pt")
        mp.spawn(_rank_main, args=(config.processes, _free_port(), config, seed, out), nprocs=config.processes)
        return ObservedRun(**torch.load(out, weights_only=False))
