"""NES (Ilyas et al. 2018): targeted L-infinity attack from estimated gradients of the target's log-probability.

Each iteration draws ``samples / 2`` Gaussian directions (constant on ``tile`` x ``tile`` blocks
when ``tile`` > 1) and queries both ends of each (antithetic pairs at radius ``sigma``),
estimates the gradient, smooths it with momentum, and takes a signed step of size ``lr``
projected onto the eps-ball. The step size drops by ``plateau_drop`` when the loss has not
improved for ``plateau_length`` steps, never below ``min_lr``. A probe that is already
adversarial wins if it lies in the eps-ball; one outside it is reflected into the ball and
asked again.

OARS form: stage 1 sets floors on ``sigma`` and on the step (``min_lr``: the shortest sign
step its probes saw pass); a rejected pair is redrawn, and a rejected step is rolled back and
retried from a fresh gradient estimate. dpplat's additions: with ``tile="auto"`` stage 1 first
coarsens the directions' tile (through ``auto_tiles``) while sigma's floor stays above
``coarsen_above`` times eps, and in stage 2 it coarsens for good once the escalated floor passes
that limit (``TiledDirections._watch``). The plateau decay also takes the step below its floor:
held at the floor, the sign steps oscillate around the optimum. Such a step is taken whatever
the defense answers, and still asked about: an accepted answer is the step's loss, and may be
the success, which the probes alone, lying up to a few sigma outside the ball, rarely find
(``benchmarks/results/oars-cifar10-cpu-16img.md`` has the images this decided).
"""

from __future__ import annotations

import torch

from dpplat.audits.attacks.base import Attack, Knob, register_attack, random_sign
from dpplat.audits.attacks.tiles import TiledDirections, tiled_normal


def _probe_sigma(attack, x, around, value, n, generator):
    return around + value * tiled_normal(n, tuple(x.shape), attack.tile, generator)


def _probe_step(attack, x, around, value, n, generator):
    signs = random_sign((n, *x.shape), generator) if attack.tile == 1 else \
        tiled_normal(n, tuple(x.shape), attack.tile, generator).sign()  # tile 1: pixel-wise signs
    return around + value * signs


@register_attack("nes")
class NES(TiledDirections, Attack):
    norm = "linf"
    targeted = True
    tile_knob = "sigma"
    tile_returns = False  # measured: see TiledDirections._watch
    knobs = (Knob("sigma", 1e-4, 0.5, _probe_sigma), Knob("min_lr", 1e-4, 0.5, _probe_step))

    def __init__(self, *, eps: float = 0.05, samples: int = 50, sigma: float = 1e-3, lr: float = 0.01,
                 min_lr: float = 5e-5, momentum: float = 0.9, plateau_length: int = 5, plateau_drop: float = 2.0,
                 max_iterations: int = 100_000, tile: int | str = "auto", auto_tiles: tuple[int, ...] = (1, 2),
                 coarsen_above: float = 0.5, **common) -> None:
        super().__init__(eps=eps, **common)
        if samples < 2 or samples % 2:
            raise ValueError(f"samples must be an even number of at least 2 (antithetic pairs), got {samples}.")
        self._set_tiles(tile, auto_tiles, coarsen_above)
        self.samples, self.sigma, self.lr, self.min_lr = samples, sigma, lr, min_lr
        self.momentum, self.plateau_length, self.plateau_drop = momentum, plateau_length, plateau_drop
        self.max_iterations = max_iterations

    def _loss(self, scores: torch.Tensor, target: int) -> torch.Tensor:
        return scores[:, target]

    def _run(self, oracle, x, start) -> None:
        lr = self.lr
        target = oracle.target
        low, high = (x - self.eps).clamp(0, 1), (x + self.eps).clamp(0, 1)
        x_adv = x.clone()
        scores, _ = oracle.scores(x_adv)
        losses = [float(self._loss(scores, target))]
        grad = torch.zeros_like(x)
        last_drop, unheard, below_floor = 0, False, False
        for _ in range(self.max_iterations):
            sigma = self.floor("sigma", self.sigma)
            # OARS: the shortest step stage 1 saw pass; the paper's form never steps below it
            resolution = self.floors.get("min_lr") if self.extended else None
            if not below_floor:  # raised to the floor until the plateau decay takes it under
                lr = self.floor("min_lr", lr)

            def propose(m: int) -> torch.Tensor:
                u = self.noise(m, tuple(x.shape))
                return torch.cat([x_adv + sigma * u, x_adv - sigma * u]).clamp(0, 1)

            pairs, pair_scores = self.accepted(oracle, propose, self.samples // 2, group=2)
            if pairs.shape[1] == 0:
                continue
            self._check_probes(oracle, x, pairs.flatten(0, 1), pair_scores.flatten(0, 1), low, high)
            if self.done():
                return
            ends = self._loss(pair_scores[0], target), self._loss(pair_scores[1], target)
            if unheard:  # the step's own answer was a rejection: its loss is its probes' mean
                losses.append(float((ends[0] + ends[1]).mean() / 2))
            u = (pairs[0] - pairs[1]) / (2 * sigma)  # the accepted directions (clamping aside)
            estimate = ((ends[0] - ends[1]).view(-1, 1, 1, 1) * u).mean(0) / (2 * sigma)
            grad = self.momentum * grad + (1 - self.momentum) * estimate
            candidate = torch.minimum(torch.maximum(x_adv + lr * grad.sign(), low), high)
            scores, rejected = oracle.scores(candidate)
            unheard = bool(rejected[0])
            if unheard and (resolution is None or lr >= resolution):
                unheard = False
                continue  # OARS: roll back, retry from a fresh estimate
            x_adv = candidate  # OARS: a step under the floor is taken even when the defense rejects it
            if not unheard:
                losses.append(float(self._loss(scores, target)))
                self.consider(x, x_adv.unsqueeze(0), oracle.is_adversarial_scores(scores))
                if self.done():
                    return
            window = self.plateau_length
            if len(losses) - last_drop > window and max(losses[-window:]) <= losses[-window - 1]:
                lr, last_drop = max(lr / self.plateau_drop, self.min_lr), len(losses)
                below_floor = resolution is not None and lr < resolution

    def _check_probes(self, oracle, x, probes, scores, low, high, most: int = 4) -> None:
        """An adversarial probe wins if it lies in the eps-ball; one outside is reflected into it and asked again.

        Probes sit ``sigma`` from ``x_adv``, so once ``x_adv`` nears the target class some of them
        reach it first (so can a step under the OARS floor whose own query the defense rejects).
        Sign steps drive most pixels to the ball's edge, where half of each probe's noise points out:
        reflecting it inwards keeps the probe's distance from ``x_adv``, which clamping would erase,
        and with it the dither that lets a stateful defense tell it from earlier queries.
        """
        adversarial = oracle.is_adversarial_scores(scores)
        inside = ((probes >= low - 1e-6) & (probes <= high + 1e-6)).flatten(1).all(1)
        self.consider(x, probes, adversarial & inside)
        outside = probes[adversarial & ~inside][:most]
        if len(outside) and not self.done():
            reflected = torch.where(outside > high, 2 * high - outside, outside)
            reflected = torch.where(reflected < low, 2 * low - reflected, reflected)
            reflected = torch.minimum(torch.maximum(reflected, low), high)  # a ball narrower than the noise
            answers, rejected = oracle.scores(reflected)
            self.consider(x, reflected, oracle.is_adversarial_scores(answers) & ~rejected)
