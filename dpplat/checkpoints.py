"""A training run's checkpoint file: where it lives, what identity it carries, and the checks before it is used.

A checkpoint lives in its store's work folder (``dpplat-work/<store id>/runs/run-<id>/``), so
two stores in one folder never share one, and it carries its identity: the store's id, the
run's id, the training step it holds and the DP-SGD steps its accountant had counted. A
resume, or an audit of the run's model, reads it only after :func:`load_run_checkpoint` has
checked that identity against the store's records; a file that does not match is refused
with one line and left as it is.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dpplat.store import RunStore


class CheckpointError(ValueError):
    """A checkpoint file that may not be used for this run; the message says why and what to do."""


@dataclass(frozen=True)
class CheckpointIdentity:
    """Whose checkpoint a file is, and how far its run had got."""

    store_id: str
    run_id: int
    step: int  # the training step the model and optimizer are at
    spent_steps: int  # DP-SGD steps the accountant had counted when it was written

    def as_dict(self) -> dict:
        return asdict(self)


def checkpoint_path(store: RunStore, run_id: int) -> Path:
    return store.work_dir / "runs" / f"run-{run_id}" / "checkpoint.pt"


def dp_steps(history: list, noise_multiplier: float, sample_rate: float) -> int:
    """DP-SGD steps in an accountant history: the entries at the run's (sigma, q), not its earlier releases."""
    return sum(int(n) for sigma, q, n in history
               if math.isclose(sigma, noise_multiplier, rel_tol=1e-12) and math.isclose(q, sample_rate, rel_tol=1e-12))


def load_run_checkpoint(store: RunStore, run_id: int) -> dict | None:
    """The checked content of run ``run_id``'s checkpoint, or None when the run never wrote one.

    Refused (:class:`CheckpointError`): a file that is unreadable or truncated, that carries
    no identity or another store's or run's, that is older than the checkpoint the store
    recorded, or whose accountant history counts fewer steps than it claims to hold or
    more than the store saw started.
    """
    run = store.get_run(run_id)
    path = checkpoint_path(store, run_id)
    recorded = run["checkpoint_step"]
    where = f"run {run_id}'s checkpoint {path}"
    if not path.is_file():
        if recorded is None:
            return None
        raise CheckpointError(f"{where} is missing, though the store recorded one at step {recorded}; restore the "
                              "file, or start a new run.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(f"{where} cannot be read (truncated or corrupt: {str(err).splitlines()[0]}); it was "
                              "left as it is. Restore it from a backup, or start a new run.") from None
    if not isinstance(state, dict) or "identity" not in state.get("extra", {}):
        raise CheckpointError(f"{where} carries no identity (store, run and step): it was not written for this run. "
                              "It was left as it is; start a new run.")
    found = CheckpointIdentity(**state["extra"]["identity"])
    if found.store_id != store.store_id:
        raise CheckpointError(f"{where} belongs to another store (id {found.store_id}, this store is "
                              f"{store.store_id}); it was left as it is. Resume the run from its own store.")
    if found.run_id != run_id:
        raise CheckpointError(f"{where} belongs to run {found.run_id}, not run {run_id}; it was left as it is.")
    if recorded is not None and found.step < recorded:
        raise CheckpointError(f"{where} holds step {found.step}, older than the checkpoint at step {recorded} that "
                              "the store recorded; restore the newer file, or start a new run.")
    history = state.get("accountant", {}).get("history", [])
    counted = dp_steps(history, run["noise_multiplier"], run["sample_rate"])
    if counted < found.step or counted != found.spent_steps:
        raise CheckpointError(f"{where} has a truncated accountant history: it counts {counted} DP-SGD steps but "
                              f"claims step {found.step} with {found.spent_steps} spent. It was left as it is; "
                              "start a new run.")
    if found.spent_steps > run["spent_steps"]:
        raise CheckpointError(f"{where} counts {found.spent_steps} spent steps, more than the {run['spent_steps']} "
                              "the store recorded as started: it does not belong to this store's history of the run.")
    return state
