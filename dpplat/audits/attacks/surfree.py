"""SurFree (Maho, Furon & Le Merrer 2021): untargeted L2 decision-based attack by circular search.

From a boundary point ``x_b`` at distance ``r`` from the input ``x``, it draws a new
low-frequency DCT direction ``t`` orthogonal to ``u = (x_b - x) / r`` and to the last
few directions tried, and searches the circle through ``x`` and ``x_b`` in the plane of
``u`` and ``t``: the point at angle theta is ``x + r cos(theta) (u cos(theta) + t sin(theta))``,
at distance ``r cos(theta)``, so the largest adversarial angle is the best. Angles
``+-theta_max * (1 - k / evals)`` are tried from the largest down, the first adversarial
one is refined by a binary search on the angle, and ``theta_max`` grows after a
success and shrinks after a miss.

OARS form: stage 1 sets a floor on the smallest angle tried (``min_angle``); a
rejected candidate means a new direction is drawn; a binary search that hits a
rejection ends at the last adversarial angle. dpplat's addition, with ``ratio="auto"``
(the default): stage 1 also chooses the subspace, as HSJA and Boundary choose a tile
(:func:`~dpplat.audits.attacks.tiles.finest_that_fits`): the lowest half of the frequencies in
each axis (ratio 2), else the lowest quarter (ratio 4) where the angle floor's move, the
reference radius times its sine, is over ``coarsen_above`` (0.35) of the L2 budget. The narrower
subspace gets past PIHA where the wider one does not, and loses images the wider one wins
undefended; the threshold was chosen on CIFAR-10 images
(``benchmarks/results/oars-cifar10-cpu-surfree-ratio.md``).
"""

from __future__ import annotations

import math

import torch

from dpplat.audits.attacks.base import Attack, Knob, register_attack
from dpplat.audits.attacks.qeba import low_frequency
from dpplat.audits.attacks.knob_calibration import calibrate_knobs
from dpplat.audits.attacks.tiles import checked_coarseness, coarseness_in_use, finest_that_fits


def _probe_angle(attack, x, around, value, n, generator):
    t = low_frequency(n, x.shape, attack.ratio, generator)
    t = t / t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return around + attack.reference_radius * math.sin(value) * t


@register_attack("surfree")
class SurFree(Attack):
    norm = "l2"
    needs_start = True
    knobs = (Knob("min_angle", 1e-4, math.pi / 4, _probe_angle),)

    def __init__(self, *, eps: float = 0.05, theta_max: float = math.radians(30), evals: int = 4,
                 refine_steps: int = 10, ratio: int | str = "auto", auto_ratios: tuple[int, ...] = (2, 4),
                 coarsen_above: float = 0.35, memory: int = 10, min_angle: float = 1e-3,
                 max_iterations: int = 1_000_000, **common) -> None:
        super().__init__(eps=eps, **common)
        self.ratio_setting, self.auto_ratios = checked_coarseness(
            "ratio", " (1/ratio of the frequencies kept in each axis)", ratio, auto_ratios, coarsen_above)
        self.coarsen_above = coarsen_above
        self.theta_max, self.evals, self.refine_steps = theta_max, evals, refine_steps
        self.memory, self.min_angle, self.max_iterations = memory, min_angle, max_iterations

    @property
    def ratio(self) -> int:
        """The subspace in use (:func:`~dpplat.audits.attacks.tiles.coarseness_in_use`)."""
        return coarseness_in_use(self, "ratio", self.ratio_setting, self.auto_ratios)

    def calibrate(self, oracle, x: torch.Tensor) -> dict[str, float]:
        """Stage 1, and with ``ratio="auto"`` the subspace (see the module): an angle floor counts as fitting when
        its probe's move, the reference radius times its sine, is within ``coarsen_above`` of the L2 budget."""
        if self.ratio_setting != "auto" or not self.extended:  # the paper's form keeps the widest subspace
            return calibrate_knobs(self, oracle, x)
        move = self.coarsen_above * self.eps * math.sqrt(x.numel())
        limit = math.asin(min(1.0, move / self.reference_radius))
        return finest_that_fits(self, oracle, x, "ratio", self.auto_ratios, "min_angle", limit)

    def _direction(self, u: torch.Tensor, previous: list[torch.Tensor]) -> torch.Tensor:
        t = low_frequency(1, u.shape, self.ratio, self.rng)[0]
        for b in [u, *previous]:  # Gram-Schmidt against the current direction and the recent ones
            t = t - (t * b).sum() * b
        return t / t.norm().clamp_min(1e-12)

    def _run(self, oracle, x, start) -> None:
        self.check_start(oracle, start)
        x_b = self.boundary_search(oracle, x, start, 1e-3)
        previous: list[torch.Tensor] = []
        theta_max = self.theta_max
        for _ in range(self.max_iterations):
            min_angle = self.floor("min_angle", self.min_angle)
            if self.done():
                return
            r = float((x_b - x).norm())
            u = (x_b - x) / r
            t = self._direction(u, previous)
            previous = ([t] + previous)[:self.memory]

            def point(theta: float) -> torch.Tensor:
                return (x + r * math.cos(theta) * (u * math.cos(theta) + t * math.sin(theta))).clamp(0, 1)

            found, rejected_any = None, False
            for k in range(self.evals):
                magnitude = theta_max * (1 - k / self.evals)
                if magnitude < min_angle:
                    break
                for theta in (magnitude, -magnitude):
                    adv, rejected = oracle.adversarial(point(theta).unsqueeze(0))
                    rejected_any |= bool(rejected[0])
                    if bool(adv[0]):
                        found = theta
                        break
                if found is not None or rejected_any:
                    break  # OARS: a rejected candidate means a new direction
            if found is None:
                theta_max = max(theta_max * 0.9, min_angle)
                continue
            theta_max = min(theta_max * 1.1, math.pi / 2)
            low, high = abs(found), min(abs(found) + theta_max / self.evals, math.pi / 2)
            sign = 1.0 if found > 0 else -1.0
            for _ in range(self.refine_steps):  # largest adversarial angle between low and high
                mid = (low + high) / 2
                adv, rejected = oracle.adversarial(point(sign * mid).unsqueeze(0))
                if bool(rejected[0]):
                    break
                if bool(adv[0]):
                    low = mid
                else:
                    high = mid
            x_b = point(sign * low)
            self.consider(x, x_b.unsqueeze(0), torch.tensor([True]))
