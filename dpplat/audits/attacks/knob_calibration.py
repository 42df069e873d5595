"""OARS stage 1: each attack's step-size knobs, and the search for the floor of each.

An attack declares its knobs (how far its queries move) with a probe that perturbs the input as
the attack would; before attacking, :func:`calibrate_knobs` binary-searches each knob for the
smallest value whose probes the defense rarely rejects, and that value becomes the knob's floor
for stage 2 (in :mod:`dpplat.audits.attacks.base`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from dpplat.audits.attacks.base import Attack, Oracle


@dataclass
class Knob:
    """A step-size knob for OARS stage 1: larger values move queries further and are rejected less.

    ``attribute`` is the attack's attribute that holds the floor; ``probe(attack, x, around, value, n, generator)``
    returns ``n`` queries that perturb ``around`` as the attack would with that value. ``around`` is
    ``x`` unless the knob has a ``base(attack, x, generator)``: a point queried first (and so stored
    by the defense) that the attack's later proposals move away from, e.g. Square's stripes.
    An ``optional`` knob only helps the others through (Square's dither): when even its largest value
    is rejected, its floor is 0, the knob left out, rather than its largest value, which costs the attack
    without getting it past the defense.
    """

    attribute: str
    low: float
    high: float
    probe: Callable
    integer: bool = False
    base: Callable | None = None
    optional: bool = False


def calibrate_knobs(attack: Attack, oracle: Oracle, x: torch.Tensor,
                    knobs: tuple[Knob, ...] | None = None) -> dict[str, float]:
    """OARS stage 1: for each knob in turn (``knobs``, by default all the attack's), the smallest value whose
    probes are rarely rejected; a knob's probes use the floors of the knobs before it."""
    floors: dict[str, float] = {}
    for knob in attack.knobs if knobs is None else knobs:
        floor = search_knob(attack, oracle, x, knob, floors)
        if floor is None:  # even the largest value is rejected: use it, stage 2 copes
            floor = 0.0 if knob.optional else knob.high
        floors[knob.attribute] = floor
    return floors


def search_knob(attack: Attack, oracle: Oracle, x: torch.Tensor, knob: Knob, floors: dict[str, float]) -> float | None:
    """The smallest value of ``knob`` whose probes are rejected less often than ``target_rate``, or None when even
    its largest value is rejected that often. ``floors`` are the other knobs' values, for the probe.

    The share is a float64 quotient, which rounds as the target written as a number does: as a float32 mean,
    k rejections of n rounded to either side of it (1 of 20 came out above 5%, 5 of 20 exactly at 25%), so
    whether a share equal to the target passed depended on the numbers. "Below" is what every measurement so
    far used at the default 5% of 20 probes: none of them rejected."""
    attack.floors = floors
    around = x
    if knob.base is not None:
        around = knob.base(attack, x, attack.rng).clamp(0, 1)
        oracle.scores(around)

    def passes(value: float) -> bool:
        probes = knob.probe(attack, x, around, value, attack.probes, attack.rng).clamp(0, 1)
        _, rejected = oracle.scores(probes)
        return int(rejected.sum()) / len(rejected) < attack.target_rate

    if not passes(knob.high):
        return None
    # the search never probes its low end, so an integer knob starts one below: its lowest value can be the floor
    low, high = (knob.low - 1 if knob.integer else knob.low), knob.high
    for _ in range(attack.search_steps):
        if knob.integer and high - low <= 1:
            break
        mid = (low + high) // 2 if knob.integer else math.sqrt(low * high)
        if passes(mid):
            high = mid
        else:
            low = mid
    return high
