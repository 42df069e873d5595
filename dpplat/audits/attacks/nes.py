"""NES (Ilyas et al. 2018): targeted L-infinity attack from estimated gradients of the target's log-probability.

Each iteration draws ``samples / 2`` Gaussian directions and queries both ends of each
(antithetic pairs at radius ``sigma``), estimates the gradient, smooths it with
momentum, and takes a signed step of size ``lr`` projected onto the eps-ball. The
step size drops by ``plateau_drop`` when the loss has not improved for
``plateau_length`` steps, never below ``min_lr``.

OARS form: stage 1 sets floors on ``sigma`` and ``min_lr``; a rejected pair is redrawn,
and a rejected step is rolled back and retried from a fresh gradient estimate.
"""

from __future__ import annotations

import torch

from dpplat.audits.attacks.base import Attack, Knob, register_attack, random_sign


def _probe_sigma(attack, x, around, value, n, generator):
    return around + value * torch.randn((n, *x.shape), generator=generator)


def _probe_step(attack, x, around, value, n, generator):
    return around + value * random_sign((n, *x.shape), generator)


@register_attack("nes")
class NES(Attack):
    norm = "linf"
    targeted = True
    knobs = (Knob("sigma", 1e-4, 0.5, _probe_sigma), Knob("min_lr", 1e-4, 0.5, _probe_step))

    def __init__(self, *, eps: float = 0.05, samples: int = 50, sigma: float = 1e-3, lr: float = 0.01,
                 min_lr: float = 5e-5, momentum: float = 0.9, plateau_length: int = 5, plateau_drop: float = 2.0,
                 max_iterations: int = 100_000, **common) -> None:
        super().__init__(eps=eps, **common)
        if samples < 2 or samples % 2:
            raise ValueError(f"samples must be an even number of at least 2 (antithetic pairs), got {samples}.")
        self.samples, self.sigma, self.lr, self.min_lr = samples, sigma, lr, min_lr
        self.momentum, self.plateau_length, self.plateau_drop = momentum, plateau_length, plateau_drop
        self.max_iterations = max_iterations

    def _loss(self, scores: torch.Tensor, target: int) -> torch.Tensor:
        return scores[:, target]

    def _run(self, oracle, x, start) -> None:
        lr = self.lr
        target = oracle.target
        x_adv = x.clone()
        scores, _ = oracle.scores(x_adv)
        losses = [float(self._loss(scores, target))]
        grad = torch.zeros_like(x)
        last_drop = 0
        for _ in range(self.max_iterations):
            sigma, min_lr = self.floor("sigma", self.sigma), self.floor("min_lr", self.min_lr)
            lr = max(lr, min_lr)

            def propose(m: int) -> torch.Tensor:
                u = torch.randn((m, *x.shape), generator=self.rng)
                return torch.cat([x_adv + sigma * u, x_adv - sigma * u]).clamp(0, 1)

            pairs, pair_scores = self.accepted(oracle, propose, self.samples // 2, group=2)
            if pairs.shape[1] == 0:
                continue
            u = (pairs[0] - pairs[1]) / (2 * sigma)  # the accepted directions (clamping aside)
            diff = self._loss(pair_scores[0], target) - self._loss(pair_scores[1], target)
            estimate = (diff.view(-1, 1, 1, 1) * u).mean(0) / (2 * sigma)
            grad = self.momentum * grad + (1 - self.momentum) * estimate
            candidate = torch.minimum(torch.maximum(x_adv + lr * grad.sign(), x - self.eps), x + self.eps).clamp(0, 1)
            scores, rejected = oracle.scores(candidate)
            if bool(rejected[0]):
                continue  # OARS: roll back, retry from a fresh estimate
            x_adv = candidate
            losses.append(float(self._loss(scores, target)))
            self.consider(x, x_adv.unsqueeze(0), oracle.is_adversarial_scores(scores))
            if self.done():
                return
            window = self.plateau_length
            if len(losses) - last_drop > window and max(losses[-window:]) <= losses[-window - 1]:
                lr, last_drop = max(lr / self.plateau_drop, min_lr), len(losses)
