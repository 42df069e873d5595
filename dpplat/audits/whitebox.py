"""The white-box audit of one DP-SGD training run with gradient canaries (Nasr et al. 2023; Steinke et al. 2023).

Each of ``canaries`` auditor-chosen per-sample gradients enters training with probability 1/2. An
included canary is one more example: every step samples it with the same probability q as every
real example, the engine clips it with the same per-group bounds (:meth:`DPModule.add_example_gradients`)
and its clipped gradient joins the clipped sum before the one noise draw. A canary is a random
direction in every clipping group, ``overshoot`` times that group's bound long, so that correct
clipping shortens it to the bound and a layer left unclipped shows; each step flips it by a fresh random
sign that the observer knows, so that thousands of canaries' small overlaps average out. The accountant counts the
canaries like any example (N grows by the included canaries; q is unchanged).

The observer sees every noisy update (the threat model DP-SGD is accounted for) and knows the real
examples' clipped sum of each step. DP-SGD's guarantee for a canary holds whatever the other
examples contribute, so the observer subtracts it (else the real gradients, projected on a canary's
direction, would swamp the signal) and projects the rest on each canary's direction, in units of
the noise's standard deviation; the likelihood ratio of those projections given the claimed sigma
and q scores each canary. The scores give Steinke et al.'s one-run bound, its f-DP reading over Gaussian curves
(Mahloujifar et al. 2024, :mod:`dpplat.audits.one_run_fdp`), the Bayesian interval on its guesses and a mu-GDP fit
(:mod:`dpplat.audits.canary_estimates`).

Fault injection proves the audit's power: ``half-noise`` draws the noise at sigma / 2 and
``no-clip-one-layer`` skips clipping in one group, while the accountant is told the correct settings.
``noise-per-rank`` trains on several processes (torch.distributed, gloo) and adds the noise on every
rank instead of once: the opposite error, which the audit must read as less leakage. With
``processes > 1`` the canaries join rank 0's share of each step, and the observer sums the ranks'
clipped sums of the real examples before it subtracts them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dpplat import data as datasets
from dpplat.audits.canary_estimates import gdp_fit, gdp_mu, likelihood_ratio_scores, measured_scales, one_run_bound
from dpplat.audits.one_run_fdp import fdp_one_run_bound
from dpplat.audits.estimate import estimate_epsilon
from dpplat.audits.gradient_canaries import (CANARY_BLOCK, canary_directions, default_canaries, overlap_variance,
                                             step_signs)
from dpplat.config_checks import check_choice, check_range, check_types
from dpplat.engine import accounting
from dpplat.engine.privacy_engine import PrivacyEngine

INJECTIONS = ("none", "half-noise", "no-clip-one-layer", "noise-per-rank")
SUBJECTS = ("dpplat", "opacus")  # whose DP-SGD trains the audited run


@dataclass
class WhiteboxConfig:
    """One white-box audit: the training it watches and the canaries it plants."""

    dataset: str = "mnist"
    model: str = "cnn"
    epsilon: float = 2.0
    delta: float = 1e-5
    canaries: int | None = None  # per run; None: as many as :func:`default_canaries` allows
    steps: int = 500
    runs: int = 1  # independent training runs, each with its own canaries, pooled into one game
    batch_size: int = 256
    max_grad_norm: float = 1.0
    clipping: str = "per_layer"
    lr: float = 2.0
    accountant: str = "prv"
    overshoot: float = 10.0
    inject: str = "none"
    subject: str = "dpplat"
    inject_group: int = -1  # the clipping group ``no-clip-one-layer`` leaves unclipped (-1: the last)
    processes: int = 1  # data-parallel processes the audited run trains on (torch.distributed, gloo)
    subset: int | None = None
    confidence: float = 0.95
    seed: int = 0
    data_dir: str | None = None

    def __post_init__(self) -> None:
        self.dataset = datasets.canonical_dataset(self.dataset)
        self.validate()

    def validate(self) -> None:
        check_types(self)
        check_range("epsilon", self.epsilon, low=0, low_open=True)
        check_range("delta", self.delta, low=0, high=1, low_open=True, high_open=True)
        if self.canaries is not None:
            check_range("canaries", self.canaries, low=2)
        check_range("steps", self.steps, low=1)
        check_range("runs", self.runs, low=1)
        check_range("processes", self.processes, low=1)
        check_range("batch_size", self.batch_size, low=1)
        check_range("max_grad_norm", self.max_grad_norm, low=0, low_open=True)
        check_range("lr", self.lr, low=0, low_open=True)
        check_range("overshoot", self.overshoot, low=1)
        check_range("confidence", self.confidence, low=0, high=1, low_open=True, high_open=True)
        check_choice("clipping", self.clipping, ("per_layer", "flat"))
        check_choice("accountant", self.accountant, ("prv", "rdp"))
        check_choice("inject", self.inject, INJECTIONS)
        check_choice("subject", self.subject, SUBJECTS)
        if self.subject == "opacus" and (self.clipping != "flat" or self.inject != "none"):
            raise ValueError("--subject opacus audits Opacus as it is: it clips the whole gradient, so give "
                             "--clipping flat, and injects no fault (--inject none).")
        if self.inject == "noise-per-rank" and self.processes < 2:
            raise ValueError("--inject noise-per-rank adds the noise on every rank of a data-parallel run: give "
                             "--processes 2 (or more).")
        if self.subject == "opacus" and self.processes > 1:
            raise ValueError("--subject opacus trains in one process: drop --processes.")
        if self.inject == "no-clip-one-layer" and self.clipping != "per_layer":
            raise ValueError("--inject no-clip-one-layer skips one clipping group's clipping, so it needs "
                             "--clipping per_layer.")
        datasets.check_dataset_name(self.dataset)


FDP_GUESSES = 1000  # guesses the f-DP bound makes (chosen on simulated games, benchmarks/README.md)


def fdp_guess_fractions(canaries: int) -> tuple[float, ...]:
    """The share of the canaries the f-DP bound guesses on: one count fixed in advance, not a share, because its
    power comes from the most confident few hundred guesses whatever the number of canaries, and trying several
    counts would split the confidence between them (a union bound)."""
    return (min(1.0, (FDP_GUESSES + 0.5) / canaries),)


NOISE_FLOOR, SHIFT_CEILING = 0.8, 1.25  # measured / claimed ratios beyond which the run contradicts its claim


def _verdict(claimed: float, bound: float, bayes_bound: float, model_based: float, noise: float,
             shift: float, shift_error: float, fdp_mu: float = 0.0, claimed_mu: float = math.inf) -> tuple[str, bool]:
    """The audit's conclusion in words, and whether it contradicts the claim.

    The f-DP bound compares with the claim read as mu-GDP (the Gaussian curve with the claimed epsilon at delta).
    DP-SGD's composed curve lies close to a Gaussian one and, away from its tail, above the curve matched at a small
    delta, so refuting that mu is evidence against the claim."""
    problems = []
    if bound > claimed:
        problems.append(f"the one-run 95% lower bound ({bound:.3f}) exceeds it")
    if fdp_mu > claimed_mu:
        problems.append(f"the one-run f-DP 95% bound refutes it read as mu-GDP (mu {fdp_mu:.3f} > {claimed_mu:.3f})")
    if bayes_bound > claimed:
        problems.append(f"the Bayesian 95% lower bound ({bayes_bound:.3f}) exceeds it")
    if noise < NOISE_FLOOR:
        problems.append(f"the noise measured in the updates is {noise:.2f} x the standard deviation the accountant "
                        "assumes")
    if shift > SHIFT_CEILING and shift - 1 > 4 * shift_error:  # beyond the ceiling, and no accident of sampling
        problems.append(f"a canary's clipped contribution measures {shift:.2f} x the clipping bound (clipping is "
                        "not applied somewhere)")
    if problems:
        return (f"FAIL: this training leaks more than its claimed epsilon = {claimed:.3f}: " + "; ".join(problems)
                + ". Suspect the clipping, the noise or the accounting.", True)
    if model_based > 1.25 * claimed:
        return (f"SUSPECT: the model-based estimate ({model_based:.3f}) is well above the claimed epsilon = "
                f"{claimed:.3f}, though no bound exceeds it; run more canaries or steps.", False)
    return (f"PASS: no empirical bound exceeds the claimed epsilon = {claimed:.3f}; the model-based estimate is "
            f"{model_based:.3f}.", False)


def audited_model(config: WhiteboxConfig) -> torch.nn.Module:
    """The model the audit trains, refused in one line when the engine cannot make it private."""
    from dpplat.engine.validate import check_module
    from dpplat.training import TrainConfig, build_model

    model = build_model(TrainConfig(dataset=config.dataset, model=config.model, data_dir=config.data_dir))
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model {config.model} has no trainable parameters: there is nothing to audit.")
    check_module(model)
    return model


@dataclass
class ObservedRun:
    """What the observer saw of one training run: each step's projection on each canary, and the truth."""

    projections: np.ndarray  # (steps, canaries), in units of the claimed noise's standard deviation
    included: np.ndarray
    noise_multiplier: float
    sample_rate: float
    claimed_epsilon: float
    dataset_size: int
    clipping_groups: list[str]
    inject_group: str | None
    overlap: float = 0.0  # the canaries' expected overlap variance in a projection (:func:`overlap_variance`)
    sampled_shift: float = math.nan  # mean projection where an included canary was sampled, x sigma (claim: 1)
    sampled_count: int = 0  # how many (step, canary) pairs that mean is over


@dataclass
class AuditedTraining:
    """What every subject's audited run starts from: the data, the model, the canaries' inclusion, q and sigma."""

    train_set: object
    model: torch.nn.Module
    included: np.ndarray
    dataset_size: int
    batch: int
    sample_rate: float
    sigma: float
    canaries: int

    @classmethod
    def build(cls, config: WhiteboxConfig, seed: int) -> "AuditedTraining":
        torch.manual_seed(seed)
        train_set = datasets.load_dataset(config.dataset, "train", subset=config.subset, seed=config.seed,
                                          data_dir=config.data_dir)
        model = audited_model(config)
        n_real = len(train_set)
        batch = min(config.batch_size, n_real)
        sample_rate = batch / n_real  # canaries are sampled at the same rate as every example
        sigma = accounting.calibrate_noise(target_epsilon=config.epsilon, target_delta=config.delta,
                                           sample_rate=sample_rate, steps=config.steps, accountant=config.accountant)
        count = config.canaries or default_canaries(model, config.clipping, sigma, sample_rate)
        included = np.random.default_rng(seed).random(count) < 0.5
        accounting.check_budget(config.epsilon, config.delta, n_real + int(included.sum()))
        return cls(train_set, model, included, n_real, batch, sample_rate, sigma, count)


def train_with_canaries(config: WhiteboxConfig, seed: int, say: Callable[[str], None]) -> ObservedRun:
    """One DP-SGD training run with the canaries planted, observed at every step."""
    setup = AuditedTraining.build(config, seed)
    train_set, model, included, n_real, batch, sample_rate, sigma = (
        setup.train_set, setup.model, setup.included, setup.dataset_size, setup.batch, setup.sample_rate, setup.sigma)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    engine = PrivacyEngine(accountant=config.accountant)
    dp_model, dp_opt, loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=config.lr),
        data_loader=DataLoader(train_set, batch_size=batch, shuffle=True), noise_multiplier=sigma,
        max_grad_norm=config.max_grad_norm, clipping=config.clipping, target_epsilon=config.epsilon,
        target_delta=config.delta, noise_generator=torch.Generator().manual_seed(seed + 1 + 7919 * rank))
    params = dp_model.trainable_parameters()
    groups = dp_model.clipping_groups
    directions = canary_directions(dp_model.per_layer_bounds, dp_model.group_sizes, setup.canaries,
                                   torch.Generator().manual_seed(seed + 2), config.clipping)
    length = dp_model.sensitivity * config.overshoot  # overshoot x the bound: correct clipping shortens it
    if config.inject == "half-noise":
        dp_opt.noise_fault_factor = 0.5
    target = None
    if config.inject == "no-clip-one-layer":
        target = config.inject_group % len(groups)
        dp_model.skip_clipping(target)
    if config.inject == "noise-per-rank":
        dp_opt.noise_on_every_rank = True
    noise_std = sigma * dp_model.sensitivity
    projections = np.zeros((config.steps, setup.canaries), dtype=np.float32)
    canary_rng, sign_rng = np.random.default_rng(seed + 3), np.random.default_rng(seed + 4)
    real_sum = torch.zeros(sum(dp_model.group_sizes))
    step, signs = 0, None
    shift_sum, shift_count = 0.0, 0  # the sampled canaries' projections: their clipped length, measured

    def observe(opt) -> None:  # every noisy update, before the optimizer applies it
        noisy_sum = torch.cat([p.grad.reshape(-1) for p in params]) * opt.expected_batch_size
        projections[step] = (directions.project(noisy_sum - real_sum, signs) / noise_std).numpy()

    dp_opt.attach_step_hook(observe)
    say(f"white-box audit: {setup.canaries} canaries ({int(included.sum())} included), {config.steps} steps, "
        f"sigma {sigma:.3f}, q {sample_rate:.4g}, inject {config.inject}, seed {seed}")
    while step < config.steps:
        for x, y in loader:
            if step >= config.steps:
                break
            dp_opt.zero_grad()
            if len(x):
                F.cross_entropy(dp_model(x), y).backward()
            real_sum.copy_(torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel())
                                      for p in params]))
            if config.processes > 1:
                dist.all_reduce(real_sum)  # the observer knows every rank's real examples
            sampled = np.flatnonzero(included & (canary_rng.random(setup.canaries) < sample_rate))
            signs = step_signs(sign_rng, setup.canaries)
            if rank == 0:  # every canary lives on one rank, as every example does
                for rows in np.array_split(sampled, max(1, -(-len(sampled) // CANARY_BLOCK))):  # bounded memory
                    dp_model.add_example_gradients(directions.dense(rows, signs) * length)
            dp_opt.step()
            shift_sum, shift_count = shift_sum + float(projections[step, sampled].sum()), shift_count + len(sampled)
            step += 1
            if step % 100 == 0:
                say(f"  step {step}/{config.steps}")
    overlap = overlap_variance(dp_model.group_sizes, dp_model.per_layer_bounds, setup.canaries, sigma, sample_rate)
    return ObservedRun(projections, included, sigma, sample_rate, engine.get_epsilon(config.delta), n_real, groups,
                       groups[target] if target is not None else None, overlap,
                       shift_sum / shift_count * sigma if shift_count else math.nan, shift_count)


def measured_shift(observed: list[ObservedRun], scales: list[tuple[float, float, float]]) -> tuple[float, float]:
    """A canary's clipped contribution relative to the claim, and its standard error.

    The auditor knows when each canary was sampled, so it reads the contribution off those steps alone, about
    sqrt(2 / q) times more precisely than from the mixture of all projections (:func:`measured_scales`), which is
    the fallback. The scores that make the guesses never use this: it depends on which canaries were included.
    """
    if all(o.sampled_count for o in observed):
        count = sum(o.sampled_count for o in observed)
        shift = sum(o.sampled_shift * o.sampled_count for o in observed) / count
        noise = float(np.mean([n for n, _, _ in scales]))
        return shift, noise * float(np.mean([o.noise_multiplier for o in observed])) / math.sqrt(count)
    return (float(np.mean([a for _, a, _ in scales])),
            float(np.sqrt(np.sum([e * e for _, _, e in scales]))) / len(scales))


def run_whitebox(config: WhiteboxConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Train ``runs`` times with canaries, observe every noisy update, and estimate epsilon from all the canaries.

    Each run has its own canaries, and each canary is in one run only, so the runs' canaries pool
    into one game: every canary is still protected at the claimed epsilon.
    """
    config.validate()
    started = time.time()
    say = progress or (lambda message: None)
    if config.subject == "opacus":
        from dpplat.audits.whitebox_opacus import train_opacus_with_canaries as train
    else:
        from dpplat.audits.whitebox_distributed import train_data_parallel

        train = train_data_parallel if config.processes > 1 else train_with_canaries
    observed = [train(config, config.seed + 1000 * i, say) for i in range(config.runs)]
    first = observed[0]
    claimed = max(o.claimed_epsilon for o in observed)
    scales = [measured_scales(o.projections, o.noise_multiplier, o.sample_rate) for o in observed]
    # the projections' noise holds the canaries' overlaps too; the mechanism's own noise is the rest
    noise_scale = float(np.mean([math.sqrt(max(n * n - o.overlap, 1e-4)) for o, (n, _, _) in zip(observed, scales)]))
    shift_scale, shift_error = measured_shift(observed, scales)
    scores = np.concatenate([
        likelihood_ratio_scores(o.projections, o.noise_multiplier, o.sample_rate, noise_scale=n,
                                shift_scale=max(a, 1e-3)) for o, (n, a, _) in zip(observed, scales)])
    included = np.concatenate([o.included for o in observed])
    bound = one_run_bound(scores, included, config.delta, config.confidence)
    fdp_bound = fdp_one_run_bound(scores, included, config.delta, config.confidence, fdp_guess_fractions(len(scores)))
    fit = gdp_fit(scores[included], scores[~included], config.delta)
    order = np.argsort(scores, kind="stable")
    half = bound.guesses // 2 or max(1, len(scores) // 20)
    guessed_in, guessed_out = order[-half:], order[:half]
    fp, fn = int((~included[guessed_in]).sum()), int(included[guessed_out].sum())
    positives = int(included[guessed_in].sum() + included[guessed_out].sum())
    negatives = 2 * half - positives
    bayes = estimate_epsilon(fp, fn, max(negatives, 1), max(positives, 1), config.delta, config.confidence,
                             method="bayes")
    claimed_mu = gdp_mu(claimed, config.delta)
    measured_sigma = first.noise_multiplier * noise_scale / max(shift_scale, 1e-3)
    measured_epsilon = accounting.epsilon_of(accounting.make_accountant(config.accountant), config.delta,
                                             [(measured_sigma, first.sample_rate, config.steps)])
    verdict, exceeds = _verdict(claimed, bound.lower_bound, bayes.lower_bound, fit.epsilon, noise_scale, shift_scale,
                                shift_error, fdp_bound.mu, claimed_mu)
    histogram_edges = np.histogram_bin_edges(scores, bins=40)
    return {
        "config": asdict(config),
        "claimed_epsilon": claimed, "delta": config.delta, "noise_multiplier": first.noise_multiplier,
        "sample_rate": first.sample_rate, "steps": config.steps, "runs": config.runs, "canaries": len(scores),
        "included": int(included.sum()), "dataset_size": first.dataset_size,
        "accounted_size": first.dataset_size + int(first.included.sum()),
        "subject": config.subject, "clipping_groups": first.clipping_groups, "inject": config.inject, "inject_group": first.inject_group,
        "lower_bound": bound.lower_bound, "one_run": bound.as_dict(),
        "one_run_fdp": fdp_bound.as_dict(), "claimed_mu": claimed_mu,
        "bayes": {"low": bayes.low, "high": bayes.high, "lower_bound": bayes.lower_bound,
                  "counts": {"fp": fp, "fn": fn, "negatives": negatives, "positives": positives}},
        "gdp_mu": fit.mu, "gdp_epsilon": fit.epsilon,
        "measured_sigma": measured_sigma, "measured_mechanism_epsilon": measured_epsilon,
        "measured_noise": noise_scale, "canary_overlap": float(np.mean([o.overlap for o in observed])),
        "measured_canary_shift": shift_scale, "canary_shift_error": shift_error,
        "histogram": {"edges": histogram_edges.tolist(),
                      "in": np.histogram(scores[included], bins=histogram_edges)[0].tolist(),
                      "out": np.histogram(scores[~included], bins=histogram_edges)[0].tolist()},
        "exceeds_claim": exceeds, "verdict": verdict,
        "accounting_note": ("The canaries are examples: each included one is sampled at q like every example, so "
                            "N grows by the included canaries and the accountant's epsilon covers each of them."),
        "seconds": time.time() - started,
    }
