"""The white-box audit's second subject: a training run by Opacus, with the same canaries and the same observer.

The canaries go through Opacus's own code: after Opacus clips and sums the batch's per-sample
gradients (``clip_and_accumulate``), the sampled canaries are set as the per-sample gradients and
clipped and summed by the same call, which adds them to the batch's clipped sum; Opacus then adds
its one noise draw. The observer reads the noisy sum right after Opacus's ``add_noise``. Opacus
clips the whole gradient (flat clipping), so this subject takes ``clipping = "flat"``.
"""

from __future__ import annotations

import math

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader



def train_opacus_with_canaries(config, seed: int, say: Callable[[str], None]):
    """One Opacus DP-SGD run with the canaries planted, observed at every step (see :func:`train_with_canaries`)."""
    from opacus import PrivacyEngine as OpacusEngine

    from dpplat.audits.gradient_canaries import canary_directions, overlap_variance, step_signs
    from dpplat.audits.whitebox import AuditedTraining, ObservedRun

    setup = AuditedTraining.build(config, seed)
    train_set, model, included, n_real, batch, sample_rate, sigma = (
        setup.train_set, setup.model, setup.included, setup.dataset_size, setup.batch, setup.sample_rate, setup.sigma)
    engine = OpacusEngine(accountant=config.accountant)
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=config.lr),
        data_loader=DataLoader(train_set, batch_size=batch, shuffle=True), noise_multiplier=sigma,
        max_grad_norm=config.max_grad_norm, poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(seed + 1))
    params = [p for p in model.parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    directions = canary_directions([config.max_grad_norm] * len(sizes), sizes, setup.canaries,
                                   torch.Generator().manual_seed(seed + 2), "flat")
    length = config.max_grad_norm * config.overshoot
    noise_std = sigma * config.max_grad_norm
    projections = np.zeros((config.steps, setup.canaries), dtype=np.float32)
    canary_rng, sign_rng = np.random.default_rng(seed + 3), np.random.default_rng(seed + 4)
    real_sum = torch.zeros(sum(sizes))
    pending = {"rows": None, "step": 0, "signs": None}
    shift = [0.0, 0]  # the sampled canaries' projections: their sum and count
    clip_and_accumulate, add_noise = optimizer.clip_and_accumulate, optimizer.add_noise

    def with_canaries() -> None:  # Opacus clips the batch, then the canaries the same way, into one sum
        clip_and_accumulate()
        real_sum.copy_(torch.cat([p.summed_grad.reshape(-1) for p in params]))
        rows = pending["rows"]
        if rows is not None and len(rows):
            for p, part in zip(params, rows.split(sizes, dim=1)):
                p.grad_sample = part.reshape(len(rows), *p.shape).to(p.dtype)
            clip_and_accumulate()

    def noise_then_observe() -> None:
        add_noise()
        noisy_sum = torch.cat([p.grad.reshape(-1) for p in params])
        projections[pending["step"]] = (directions.project(noisy_sum - real_sum, pending["signs"]) / noise_std).numpy()

    optimizer.clip_and_accumulate, optimizer.add_noise = with_canaries, noise_then_observe
    say(f"white-box audit of Opacus: {setup.canaries} canaries ({int(included.sum())} included), {config.steps} "
        f"steps, sigma {sigma:.3f}, q {sample_rate:.4g}, seed {seed}")
    while pending["step"] < config.steps:
        for x, y in loader:
            if pending["step"] >= config.steps:
                break
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            sampled = np.flatnonzero(included & (canary_rng.random(setup.canaries) < sample_rate))
            pending["signs"] = step_signs(sign_rng, setup.canaries)
            pending["rows"] = directions.dense(sampled, pending["signs"]) * length
            optimizer.step()
            shift[0] += float(projections[pending["step"], sampled].sum())
            shift[1] += len(sampled)
            pending["step"] += 1
    groups = [name for name, p in model.named_parameters() if p.requires_grad]
    overlap = overlap_variance([sum(sizes)], [1.0], setup.canaries, sigma, sample_rate)  # one flat group
    return ObservedRun(projections, included, sigma, sample_rate, engine.get_epsilon(config.delta), n_real, groups,
                       None, overlap, shift[0] / shift[1] * sigma if shift[1] else math.nan, shift[1])
