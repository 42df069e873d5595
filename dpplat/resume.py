"""Resuming a stored run: the store's records decide what was spent, the checkpoint only where training was.

The accountant of a resumed run is rebuilt from ``runs.spent_steps``, the count of DP-SGD
steps the store saw start, which includes the steps that ran after the last checkpoint and
whose noisy updates may have been observed. The checkpoint (checked by
:func:`dpplat.checkpoints.load_run_checkpoint`) restores the model, the optimizer and the
EMA; a run that never wrote one restarts from step 0 with its spent steps still charged.

The noise and Poisson-sampling generators are reseeded from the run's seed and its spent
count: steps that are taken again after a crash get fresh noise and a fresh sample, since
replaying a released step's noise on a different gradient would reveal their difference
exactly, which no accountant allows for.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from dpplat.checkpoints import CheckpointError, load_run_checkpoint
from dpplat.store import RunStore

if TYPE_CHECKING:
    from dpplat.augment import WeightEMA
    from dpplat.engine import PrivacyEngine
    from dpplat.training import TrainConfig

RESUMABLE = ("interrupted", "running")  # a running row whose owner is gone reads as interrupted


def resumable_config(store: RunStore, run_id: int) -> "TrainConfig":
    """The stored run's config, once the run is known to be one that can be resumed."""
    from dpplat.training import TrainConfig

    run = store.get_run(run_id)
    if run.status not in RESUMABLE:
        raise ValueError(f"run {run_id} is {run.status}: there is nothing to resume. Start a new run instead.")
    if run.status == "running":
        owner = f"process {run['owner_pid']} on {run['owner_host']}"
        raise ValueError(f"run {run_id} is still running ({owner}); stop it first (Ctrl+C or kill PID), then resume.")
    return TrainConfig.from_stored(run.config)


def resume_run(store: RunStore, run_id: int, config: "TrainConfig", engine: "PrivacyEngine", loader,
               ema: "WeightEMA | None") -> int:
    """Take over run ``run_id`` and bring ``engine`` (made private for the run's config) to where it stopped.

    Returns the training step to continue from. Refuses, with one line and nothing changed,
    a run whose recomputed (sigma, q) differ from the stored ones, a checkpoint that fails
    its checks, and any state that would report less epsilon than the store already holds.
    """
    run = store.get_run(run_id)
    sigma, rate = engine.optimizer.noise_multiplier, engine.sample_rate
    if not (math.isclose(sigma, run["noise_multiplier"], rel_tol=1e-9, abs_tol=0)
            and math.isclose(rate, run["sample_rate"], rel_tol=1e-12)):
        raise ValueError(f"run {run_id} was trained at noise multiplier {run['noise_multiplier']:g} and sample rate "
                         f"{run['sample_rate']:g}; its config now gives {sigma:g} and {rate:g} (has the dataset "
                         "changed?). It cannot be resumed; start a new run.")
    state = load_run_checkpoint(store, run_id)
    spent = int(run["spent_steps"])
    if state is None and engine.releases and config.secure_mode:
        raise ValueError(f"run {run_id} has no checkpoint and released data statistics in secure mode: restarting "
                         "it would release them again with fresh noise. Start a new run instead.")
    step = 0
    if state is not None:
        engine.load_checkpoint(None, state=state)
        step = int(state["extra"]["identity"]["step"])
        if ema is not None and "ema" in state["extra"]:
            ema.model.load_state_dict(state["extra"]["ema"])
    engine.account_steps(spent)
    recorded = max([run["epsilon"] or 0.0] + [s["epsilon"] for s in store.steps(run_id) if s["epsilon"] is not None])
    epsilon = engine.get_epsilon(config.delta)
    if epsilon < recorded * (1 - 1e-9):
        raise CheckpointError(f"resuming run {run_id} would report epsilon {epsilon:.6g}, below the {recorded:.6g} "
                              "already recorded for it; refusing. The store may have been edited by hand.")
    _reseed(engine, loader, config.seed, spent)
    store.claim("runs", run_id)
    store.update_run(run_id, message=f"resumed at step {step} with {spent} steps spent "
                                     f"({spent - step} started after the checkpoint, still charged)")
    return step


def _reseed(engine: "PrivacyEngine", loader, seed: int, spent: int) -> None:
    """Fresh noise and sampling streams for the steps after ``spent`` (secure mode draws from the OS anyway)."""
    noise_seed, sample_seed = np.random.SeedSequence([seed, spent, 0x5E5]).generate_state(2, dtype=np.uint64)
    if engine.optimizer.generator is not None:
        engine.optimizer.generator.manual_seed(int(noise_seed))
    sampler = getattr(loader, "batch_sampler", None)
    if getattr(sampler, "generator", None) is not None:
        sampler.generator.manual_seed(int(sample_seed))
