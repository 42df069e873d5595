"""Boundary Attack (Brendel, Rauber & Bethge 2018): untargeted L2 random walk along the decision boundary.

From an adversarial start, each step draws candidates that move orthogonally on the
sphere around the input (relative size ``spherical_step``) and then towards the input
(relative size ``source_step``); both points are queried, and the closest adversarial
stepped candidate is kept. Each step size adapts to its own success rate, as in the
paper: the spherical step to how often the sphere point stays adversarial, the source
step to how often the step towards the input does (grow above one half, shrink below).

OARS form: stage 1 sets a floor on the size of the spherical move (L2, ``min_spherical``);
each candidate is queried once, after both moves (its sphere point alone would lie within the
floor of it, a near-duplicate a stateful defense rejects), so the step towards the input can
stay small and adapt as in the paper; rejected candidates are redrawn. dpplat's addition, with
``tile="auto"`` (the default): stage 1 also picks the directions' tile
(:mod:`~dpplat.audits.attacks.tiles`) from 1, 2 and 4 pixels, and in stage 2 the tile follows the
floor (``TiledDirections._watch``). Behind PIHA the spherical floor with pixel noise can exceed
the budget, and coarser tiles cut it; unlike NES, a boundary walk only needs random directions
along the boundary, and low-frequency ones serve it well (QEBA's and SurFree's premise), so it
goes up to 4x4 tiles (``benchmarks/results/oars-cifar10-cpu-boundary-tiles.md``).
"""

from __future__ import annotations

import torch

from dpplat.audits.attacks.base import Attack, Knob, register_attack, unit
from dpplat.audits.attacks.tiles import TiledDirections, tiled_normal


def _probe_step(attack, x, around, value, n, generator):
    return around + value * unit(tiled_normal(n, tuple(x.shape), attack.tile, generator))


@register_attack("boundary")
class Boundary(TiledDirections, Attack):
    norm = "l2"
    needs_start = True
    length_knob = "min_spherical"
    tile_knob = "min_spherical"
    knobs = (Knob("min_spherical", 1e-3, 20.0, _probe_step),)

    def __init__(self, *, eps: float = 0.05, spherical_step: float = 0.01, source_step: float = 0.01,
                 candidates: int = 10, adapt_every: int = 10, max_iterations: int = 1_000_000,
                 tile: int | str = "auto", auto_tiles: tuple[int, ...] = (1, 2, 4), coarsen_above: float = 0.5,
                 **common) -> None:
        super().__init__(eps=eps, **common)
        self._set_tiles(tile, auto_tiles, coarsen_above)
        self.spherical_step, self.source_step, self.candidates = spherical_step, source_step, candidates
        self.adapt_every, self.max_iterations = adapt_every, max_iterations

    def _run(self, oracle, x, start) -> None:
        self.check_start(oracle, start)
        x_adv = self.boundary_search(oracle, x, start, 1e-3)
        spherical, source = self.spherical_step, self.source_step
        sphere_rates: list[float] = []
        step_rates: list[float] = []
        oars = bool(self.floors)
        for _ in range(self.max_iterations):
            if self.done():
                return
            diff = x_adv - x
            dist = float(diff.norm())
            floor = self.floors.get("min_spherical", 0.0)

            def propose(m: int) -> torch.Tensor:
                eta = self.noise(m, tuple(x.shape))
                eta = eta - (eta.flatten(1) @ diff.flatten() / dist**2).view(-1, 1, 1, 1) * diff  # orthogonal
                eta = unit(eta) * max(spherical * dist, floor)
                on_sphere = diff + eta
                on_sphere = on_sphere * (dist / on_sphere.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
                stepped = x + on_sphere * (1 - source)
                if oars:  # the sphere point alone would lie within the floor of the stepped one: query that only
                    return stepped.clamp(0, 1)
                return torch.cat([x + on_sphere, stepped]).clamp(0, 1)

            points, scores = self.accepted(oracle, propose, self.candidates, group=1 if oars else 2)
            if points.shape[1] == 0:
                continue
            if oars:
                stepped = oracle.is_adversarial_scores(scores[0])
                step_rates.append(float(stepped.float().mean()))
            else:
                on_sphere = oracle.is_adversarial_scores(scores[0])
                stepped = oracle.is_adversarial_scores(scores[1]) & on_sphere
                sphere_rates.append(float(on_sphere.float().mean()))
                if bool(on_sphere.any()):
                    step_rates.append(float(stepped.float().sum() / on_sphere.float().sum()))
            if bool(stepped.any()):
                d = (points[-1][stepped] - x).flatten(1).norm(dim=1)
                if float(d.min()) < dist:
                    x_adv = points[-1][stepped][int(d.argmin())]
                    self.consider(x, x_adv.unsqueeze(0), torch.tensor([True]))
            if len(step_rates) >= self.adapt_every or len(sphere_rates) >= self.adapt_every:
                # the paper's rule: aim for about half succeeding
                if sphere_rates:
                    grow = sum(sphere_rates) / len(sphere_rates) > 0.5
                    spherical = min(spherical * (1.5 if grow else 1 / 1.5), 1.0)
                if step_rates:
                    source = min(source * (1.5 if sum(step_rates) / len(step_rates) > 0.5 else 1 / 1.5), 0.5)
                sphere_rates, step_rates = [], []
