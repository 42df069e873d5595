"""HopSkipJump (Chen, Jordan & Wainwright 2020): targeted L2 decision-based attack.

From an image the model already labels as the target, a binary search finds the
decision boundary between it and the input. Each iteration estimates the boundary's
normal from ``B`` random unit directions at radius ``delta`` (B grows as
``init_evals * sqrt(t)`` up to ``max_evals``), takes a geometric step along it,
and binary-searches back to the boundary.

OARS form: stage 1 sets a floor on the gradient-estimation radius ``delta``; rejected
directions are redrawn and the estimate uses accepted ones only; a step that ends farther
from the input than it started is rolled back. dpplat's additions: a rejected geometric step
is retried twice as long (:meth:`HopSkipJump.geometric_step`); a rejected binary-search
midpoint is redrawn at the same distance from the input, turned by a quarter of the floor
first and up to the whole floor (``Attack.boundary_search``, ``first_turn``); and with
``tile="auto"`` (the default) stage 1 picks the directions' tile from 1, 2 and 4 pixels,
coarsening while the radius floor is above half the L2 budget (as PIHA's block sums make it),
and in stage 2 the tile follows the floor (``TiledDirections._watch``). The limit of half the
budget was chosen on CIFAR-10 images and checked on held-out ones
(``benchmarks/results/oars-cifar10-cpu-hsja-tiles.md``).
"""

from __future__ import annotations

import math

import torch

from dpplat.audits.attacks.base import Attack, Knob, register_attack, unit
from dpplat.audits.attacks.tiles import TiledDirections, tiled_normal


def _probe_radius(attack, x, around, value, n, generator):
    return around + value * attack.directions(n, x.shape, generator)


@register_attack("hsja")
class HopSkipJump(TiledDirections, Attack):
    norm = "l2"
    targeted = True
    needs_start = True
    length_knob = "min_delta"
    tile_knob = "min_delta"
    knobs = (Knob("min_delta", 1e-4, 20.0, _probe_radius),)

    def __init__(self, *, eps: float = 0.05, init_evals: int = 100, max_evals: int = 1000, gamma: float = 1.0,
                 max_iterations: int = 1000, step_halvings: int = 20, min_delta: float = 0.0,
                 tile: int | str = "auto", auto_tiles: tuple[int, ...] = (1, 2, 4), coarsen_above: float = 0.5,
                 first_turn: float = 0.25, **common) -> None:
        super().__init__(eps=eps, first_turn=first_turn, **common)  # searches inside its own probes' cloud
        self._set_tiles(tile, auto_tiles, coarsen_above)
        self.init_evals, self.max_evals, self.gamma = init_evals, max_evals, gamma
        self.max_iterations, self.step_halvings, self.min_delta = max_iterations, step_halvings, min_delta

    def directions(self, n: int, shape, generator: torch.Generator) -> torch.Tensor:
        """Unit L2 directions for the gradient estimate, on the chosen tile (QEBA overrides this)."""
        return unit(tiled_normal(n, tuple(shape), self.tile, generator))

    def _run(self, oracle, x, start) -> None:
        d = x.numel()
        theta = self.gamma / (d * math.sqrt(d))
        self.check_start(oracle, start)
        x_adv = self.boundary_search(oracle, x, start, theta)
        for t in range(1, self.max_iterations + 1):
            if self.done():
                return
            dist = float((x_adv - x).norm())
            delta = self.floor("min_delta", max(math.sqrt(d) * theta * dist, self.min_delta))
            evals = int(min(self.init_evals * math.sqrt(t), self.max_evals))

            def propose(m: int) -> torch.Tensor:
                return (x_adv + delta * self.directions(m, x.shape, self.rng)).clamp(0, 1)

            points, scores = self.accepted(oracle, propose, evals)
            if points.shape[1] == 0:
                continue
            u = (points[0] - x_adv) / delta
            phi = oracle.is_adversarial_scores(scores[0]).float() * 2 - 1
            if phi.mean().abs() == 1:  # all on one side: no baseline to subtract
                grad = (phi.view(-1, 1, 1, 1) * u).mean(0)
            else:
                grad = ((phi - phi.mean()).view(-1, 1, 1, 1) * u).mean(0)
            v = grad / grad.norm().clamp_min(1e-12)
            candidate = self.geometric_step(oracle, x_adv, v, dist / math.sqrt(t))
            if candidate is None:
                continue
            found = self.boundary_search(oracle, x, candidate, theta)
            if not self.search_cut_short or float((found - x).norm()) < dist:
                x_adv = found  # a search cut short by a rejection that ends farther out is rolled back

    def geometric_step(self, oracle, x_adv: torch.Tensor, v: torch.Tensor, step: float) -> torch.Tensor | None:
        """The first adversarial point along ``v`` from ``x_adv``, trying ``step`` first; None if none is found.

        A step that leaves the adversarial region is rolled back and retried at half the length.
        In OARS form a rejected step is retried at twice the length: halving it, as a failed step
        is, only moves it closer to the stored query it collided with, and against Blacklight that
        stalled the attack for good. The step is otherwise HSJA's own, even when shorter than the
        floor: a step held at the floor is a quarter of the distance to the input near the optimum
        behind Blacklight, and on MNIST images 13 and 14 the attack then ends farther out (measured in
        ``benchmarks/results/oars-mnist-cpu-l2-attack-probes.md``). A short step that is rejected costs
        one query before it doubles.
        """
        for _ in range(self.step_halvings):
            candidate = (x_adv + step * v).clamp(0, 1)
            adv, rejected = oracle.adversarial(candidate.unsqueeze(0))
            if bool(adv[0]):
                return candidate
            step = step * 2 if bool(rejected[0]) and self.extended else step / 2
        return None
