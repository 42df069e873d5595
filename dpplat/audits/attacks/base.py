"""What every black-box attack shares: the oracle, the result, the registry and the OARS machinery.

One codebase serves the three forms of each attack. The attack code asks the :class:`Oracle` for
answers; in the *standard* form the oracle ends the attack at the first rejected query (the
published attack), in the adaptive forms it hands the rejection back and the attack adapts in
Feng et al.'s two stages:

- Stage 1 (:func:`~dpplat.audits.attacks.knob_calibration.calibrate_knobs`), before attacking: every
  attack declares the knobs that set how far its queries move (NES: sigma and minimum step;
  HSJA/QEBA: the gradient-estimation radius; Square: square size and count; SurFree: minimum angle;
  Boundary: minimum spherical step) and a probe, i.e. how it would perturb the input with a given
  knob value. A binary search finds the smallest value whose probes are rejected less often than
  ``target_rate``, and that value becomes the knob's floor.
- Stage 2, in the loop: :meth:`Attack.accepted` redraws rejected proposals (up to ``max_resamples``
  rounds) so estimates use accepted directions only, and a rejected step is rolled back and retried.

The *oars-paper* form is these two stages alone. The *oars* form adds dpplat's rules (``extended``):
floors that double when over half of the last ``escalate_window`` queries were rejected and halve
back towards stage 1's values when fewer than ``relax_below`` were (the history fills as the attack
goes on, so a floor that was enough at the start stops being enough), tiles and subspaces chosen per
image, redrawn boundary-search midpoints, HSJA's longer retry, Square's joint search with dither and
NES's steps under its floor; each attack's module says why.

Images are tensors in [0, 1]; distances are L2 normalised by sqrt(d), or L-infinity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from dpplat.audits.attacks.knob_calibration import Knob, calibrate_knobs
from dpplat.audits.defenses.base import StatefulDefense
from dpplat.audits.registry import Registry

MODES = ("standard", "oars", "oars-paper")
ADAPTIVE_MODES = ("oars", "oars-paper")  # the forms that take rejections back and adapt


class AttackStopped(Exception):
    """Raised by the oracle to end an attack: ``reason`` is "budget" or "rejected"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Oracle:
    """One user's view of a defended model for one image: answers, a query budget, and rejections."""

    def __init__(self, defense: StatefulDefense, *, label: int, target: int | None = None, budget: int = 100_000,
                 mode: str = "standard") -> None:
        if budget <= 0:
            raise ValueError(f"the query budget must be a positive number of queries, got {budget}.")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}.")
        self.defense, self.label, self.target, self.budget, self.mode = defense, label, target, budget, mode
        self.queries = 0
        self.rejections = 0
        self.watch: Callable[[int, int], None] | None = None

    @property
    def remaining(self) -> int:
        return self.budget - self.queries

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class log-probabilities and the rejected mask for a batch; counts every query, rejected or not."""
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if len(x) > self.remaining:
            raise AttackStopped("budget")
        response = self.defense.query(x)
        self.queries += len(x)
        self.rejections += int(response.rejected.sum())
        if self.mode == "standard" and bool(response.rejected.any()):
            raise AttackStopped("rejected")
        if self.watch is not None:
            self.watch(len(x), int(response.rejected.sum()))
        return response.log_probs, response.rejected

    def is_adversarial_scores(self, scores: torch.Tensor) -> torch.Tensor:
        predicted = scores.argmax(1)
        return predicted == self.target if self.target is not None else predicted != self.label

    def adversarial(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decision-based access: is each query adversarial (targeted or not), and was it rejected."""
        scores, rejected = self.scores(x)
        return self.is_adversarial_scores(scores) & ~rejected, rejected


@dataclass
class AttackResult:
    success: bool
    queries: int
    rejections: int
    distance: float
    stopped: str
    x_adv: torch.Tensor | None = None
    knobs: dict = field(default_factory=dict)

    def as_record(self) -> dict:
        return {"success": self.success, "queries": self.queries, "rejections": self.rejections,
                "distance": None if math.isinf(self.distance) else self.distance, "stopped": self.stopped,
                "knobs": self.knobs}


def distance(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image distance: L2 divided by sqrt(d), or L-infinity."""
    diff = (a - b).flatten(1) if a.dim() == 4 else (a - b).flatten().unsqueeze(0)
    if norm == "l2":
        return diff.norm(dim=1) / math.sqrt(diff.shape[1])
    return diff.abs().amax(dim=1)


class Attack:
    """Base of every attack. Subclasses set ``norm``, ``targeted``, ``knobs`` and implement ``_run``.

    ``_run(oracle, x, start)`` improves ``self.best`` (via :meth:`consider`) and returns when done;
    the oracle's :class:`AttackStopped` ends it early, and the best point so far is the result.
    """

    name = "attack"
    norm = "l2"
    targeted = False
    needs_start = False  # decision-based attacks start from an adversarial image the harness supplies
    length_knob: str | None = None  # the knob whose floor is an L2 length (it bounds binary searches)
    extended = True  # dpplat's additions to OARS in use; ``attack`` sets it from the mode (off for "oars-paper")
    knobs: tuple[Knob, ...] = ()

    def __init__(self, *, eps: float = 0.05, target_rate: float = 0.05, probes: int = 20, search_steps: int = 8,
                 max_resamples: int = 20, escalate_window: int = 100, relax_below: float = 0.1,
                 first_turn: float = 1.0, seed: int = 0) -> None:
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}.")
        if not 0 < target_rate < 1:
            raise ValueError(f"target_rate is the share of stage 1's probes that may be rejected, in (0, 1) (a value "
                             f"passes when fewer are), got {target_rate}.")
        if not 0 < first_turn <= 1:
            raise ValueError(f"first_turn is a fraction of the floor in (0, 1], got {first_turn}.")
        self.first_turn = first_turn  # a rejected search midpoint's first redraw turns by this times the floor
        self.eps, self.target_rate, self.probes, self.search_steps = eps, target_rate, probes, search_steps
        self.max_resamples, self.escalate_window, self.relax_below = max_resamples, escalate_window, relax_below
        self.seed = seed
        self.choices: dict[str, object] = {}  # stage 1's discrete choices for the current image (a tile)

    # ---- helpers for subclasses ----------------------------------------------------
    def consider(self, x: torch.Tensor, candidates: torch.Tensor, adversarial: torch.Tensor) -> None:
        """Keep the closest adversarial candidate seen so far as ``self.best``."""
        if not bool(adversarial.any()):
            return
        d = distance(candidates[adversarial], x.expand_as(candidates[adversarial]), self.norm)
        i = int(d.argmin())
        if float(d[i]) < self.best_distance:
            self.best_distance = float(d[i])
            self.best = candidates[adversarial][i].clone()

    def done(self) -> bool:
        return self.best_distance <= self.eps * (1 + 1e-5)  # float32 rounding at the ball's edge

    def accepted(self, oracle: Oracle, propose: Callable[[int], torch.Tensor], n: int,
                 group: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Query ``n`` proposals; in OARS form redraw rejected ones (stage 2). Returns (proposals, scores).

        ``propose(m)`` returns ``m * group`` queries laid out as ``group`` blocks of ``m``; a proposal
        counts as accepted only if all its ``group`` queries are (NES's antithetic pairs: group=2).
        """
        kept_x, kept_p = [], []
        need, rounds = n, 0
        while need > 0 and rounds <= self.max_resamples:
            batch = propose(need)
            scores, rejected = oracle.scores(batch)
            ok = ~rejected.view(group, need).any(0)
            kept_x.append(batch.view(group, need, *batch.shape[1:])[:, ok])
            kept_p.append(scores.view(group, need, -1)[:, ok])
            need -= int(ok.sum())
            rounds += 1
        xs = torch.cat(kept_x, dim=1)
        ps = torch.cat(kept_p, dim=1)
        return xs, ps

    def check_start(self, oracle: Oracle, start: torch.Tensor) -> None:
        """Confirm the start image is adversarial (one query); a rejected check proves nothing either way."""
        adv, rejected = oracle.adversarial(start.unsqueeze(0))
        if not bool(adv[0]) and not bool(rejected[0]):
            raise ValueError("the start image is not adversarial for this model; pick one the model labels as the "
                             "target class (or any other class when untargeted).")

    def boundary_search(self, oracle, x: torch.Tensor, adversarial: torch.Tensor, tolerance: float) -> torch.Tensor:
        """Binary search on the segment x -> adversarial for the boundary, keeping the adversarial end.

        OARS form, for attacks whose floor is an L2 length (``length_knob``): a rejected midpoint
        is redrawn off the segment, turned by about the floor at the same distance from ``x``
        (:meth:`_redraw_at_radius`; stage 2's resampling
        applied to the search: a stateful defense remembers the segment's earlier points, and the
        floor is the distance stage 1 found its probes pass at). An adversarial redraw becomes the
        new end of the segment, so the search goes on; one whose redraws are all rejected ends at
        the last known adversarial point. The search stops once the bracket is shorter than
        floor / sqrt(d), about how far a redraw moves along the boundary's normal. (Stopping at a quarter
        of the floor would leave the iterate up to floor / 4 inside the adversarial region, farther than
        HSJA's gradient-estimation probes of radius ``floor`` reach across: against Blacklight every
        probe then comes back adversarial and the estimate is noise.)

        The first redraw turns by ``first_turn`` times the floor and each further one by twice the last, up to
        the floor. An adversarial redraw moves the search's end sideways along the boundary by that turn, and
        HSJA searches inside the cloud of its own gradient probes, where behind Blacklight 72% of its
        midpoints were rejected: turning each by the whole floor (0.68-0.82, a quarter of the distance to the
        input) made about seven random sideways jumps per iteration, and the iterate wandered. HSJA therefore
        starts at a quarter (``benchmarks/results/oars-mnist-cpu-l2-attack-probes.md``); the other attacks search
        once, from their start image, and keep the whole floor.
        """
        low, high = 0.0, 1.0  # blend weight on the adversarial end
        self.search_cut_short = False
        floor = self.length_floor() if self.extended else None  # the paper's form never redraws

        def bracket(end: torch.Tensor) -> float:  # the tolerance on the segment x -> end
            length = float((end - x).norm())
            if not floor or length == 0:
                return tolerance
            return max(tolerance, min(floor / (math.sqrt(x.numel()) * length), 0.5))

        limit = bracket(adversarial)
        while high - low > limit:
            mid = (low + high) / 2
            midpoint = (1 - mid) * x + mid * adversarial
            point, redraws = midpoint, 0
            adv, rejected = oracle.adversarial(point.unsqueeze(0))
            while floor and bool(rejected[0]) and redraws < self.max_resamples:
                point = self._redraw_at_radius(x, midpoint, floor * min(1.0, self.first_turn * 2 ** redraws))
                adv, rejected = oracle.adversarial(point.unsqueeze(0))
                redraws += 1
            if bool(rejected[0]):
                self.search_cut_short = True
                break  # OARS: stop at the last known adversarial point
            if bool(adv[0]):
                if redraws:  # the redrawn point is the segment's new adversarial end
                    adversarial, low, high = point, low / mid, 1.0
                    limit = max(limit, bracket(adversarial))
                else:
                    high = mid
            else:
                low = mid
        point = (1 - high) * x + high * adversarial
        self.consider(x, point.unsqueeze(0), torch.tensor([True]))
        return point

    def _redraw_at_radius(self, x: torch.Tensor, midpoint: torch.Tensor, floor: float) -> torch.Tensor:
        """A rejected midpoint's stand-in: moved by about ``floor``, but on the sphere around ``x`` it lies on.

        A plain random offset of length ``floor`` also lengthens the perturbation, to
        sqrt(r^2 + floor^2): on MNIST (r about 2.8, floor about 0.7) that is 3-4% farther out, which an
        adversarial redraw then hands on as the segment's new end, and the search ends that much outside
        the budget. Turning the direction instead keeps the radius, and in high dimension the turn barely
        moves the point along the boundary's normal, so the redraw answers the midpoint's question.
        """
        offset = midpoint - x
        turned = offset + floor * unit(self.noise(1, tuple(x.shape)))[0]
        return (x + offset.norm() * turned / turned.norm()).clamp(0, 1)  # clamping moves coordinates towards x's

    def noise(self, n: int, shape: tuple[int, ...]) -> torch.Tensor:
        """``n`` Gaussian directions for the attack's random moves (tiled ones in
        :class:`~dpplat.audits.attacks.tiles.TiledDirections`)."""
        return torch.randn((n, *shape), generator=self.rng)

    def _watch(self, queries: int, rejected: int) -> None:
        """OARS: double every floor when more than half of the recent queries were rejected, and halve it
        again (never below stage 1's value) when almost none were.

        Without the way back, a burst of rejections near the boundary (the history is densest there)
        ratchets the floors up to their high end for the rest of the attack, and a gradient-estimation
        radius that large no longer estimates anything.
        """
        self._window[0] += queries
        self._window[1] += rejected
        if self._window[0] < self.escalate_window:
            return
        rate = self._window[1] / self._window[0]
        if rate > 0.5:
            for knob in self.knobs:
                value = self.floors.get(knob.attribute, knob.low)
                self.floors[knob.attribute] = min(value + 1 if knob.integer else value * 2, knob.high)
            self.escalations += 1
        elif rate < self.relax_below:
            for knob in self.knobs:  # stage 1 set a floor for every knob
                value, lowest = self.floors[knob.attribute], self._stage1[knob.attribute]
                self.floors[knob.attribute] = max(value - 1 if knob.integer else value / 2, lowest)
        self._window = [0, 0]

    def generator(self, image_index: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + image_index)

    # ---- the driver ------------------------------------------------------------------
    def _run(self, oracle: Oracle, x: torch.Tensor, start: torch.Tensor | None) -> None:
        raise NotImplementedError

    def attack(self, defense: StatefulDefense, x: torch.Tensor, label: int, *, target: int | None = None,
               start: torch.Tensor | None = None, mode: str = "standard", budget: int = 100_000,
               image_index: int = 0) -> AttackResult:
        """Attack one image behind ``defense``; the defense's history is reset first."""
        if x.dim() != 3:
            raise ValueError(f"attack one image (C, H, W) at a time, got shape {tuple(x.shape)}.")
        if x.min() < 0 or x.max() > 1:
            raise ValueError("the image must be pixel values in [0, 1] (unnormalised).")
        if self.targeted and target is None:
            raise ValueError(f"{self.name} is a targeted attack: pass target=CLASS.")
        if self.needs_start and start is None:
            raise ValueError(f"{self.name} is decision-based: pass start=, an image the model already classifies "
                             "as the goal (the target class, or any other class when untargeted).")
        defense.reset()
        self.rng = self.generator(image_index)
        self.best, self.best_distance = None, math.inf
        self.floors: dict[str, float] = {}
        self.reference_radius = float((start - x).norm()) if start is not None else 1.0
        oracle = Oracle(defense, label=label, target=target if self.targeted else None, budget=budget, mode=mode)
        stopped, stage1, stage1_choices = "finished", {}, {}
        self.choices = {}
        self.extended = mode == "oars"
        try:
            if mode in ADAPTIVE_MODES:
                self.floors = self.calibrate(oracle, x)
                stage1 = self._stage1 = dict(self.floors)  # read only: what the floors relax back to
                stage1_choices = dict(self.choices)
                self._window, self.escalations = [0, 0], 0
                if self.extended:
                    oracle.watch = self._watch
            self._run(oracle, x, start)
            if self.done():
                stopped = "success"
        except AttackStopped as stop:
            stopped = stop.reason
        success = self.best is not None and self.done()
        knobs = {"stage1": stage1, "final": dict(self.floors), "escalations": getattr(self, "escalations", 0),
                 **({"choices": stage1_choices, "final_choices": dict(self.choices)} if self.choices else {})} \
            if mode in ADAPTIVE_MODES else {}
        return AttackResult(success, oracle.queries, oracle.rejections, self.best_distance, stopped, self.best, knobs)

    def calibrate(self, oracle: Oracle, x: torch.Tensor) -> dict[str, float]:
        """OARS stage 1: the knobs' floors. An attack with a discrete choice to make as well (a tile)
        overrides this, records the choice in ``self.choices``, and returns the floors that go with it."""
        return calibrate_knobs(self, oracle, x)

    def length_floor(self) -> float | None:
        """OARS: the floor on the knob that is an L2 length (``length_knob``), if the attack has one."""
        return self.floors.get(self.length_knob) if self.length_knob else None

    def floor(self, attribute: str, value: float) -> float:
        """A knob's value, raised to the floor OARS stage 1 found (if any)."""
        return max(value, self.floors.get(attribute, value))


EVASION_ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(name: str):
    """Class decorator: make an attack available to ``create_attack`` and the CLI under ``name``."""
    return EVASION_ATTACKS.register(name)


def available_attacks() -> list[str]:
    return EVASION_ATTACKS.names()


def attack_class(name: str) -> type[Attack]:
    return EVASION_ATTACKS.get(name)


def create_attack(name: str, **params) -> Attack:
    return attack_class(name)(**params)


def random_sign(shape, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1


def unit(v: torch.Tensor) -> torch.Tensor:
    """Each row (first axis) scaled to unit L2 norm."""
    flat = v.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(v)


__all__ = ["ADAPTIVE_MODES", "Attack", "AttackResult", "AttackStopped", "Knob", "MODES", "Oracle", "available_attacks",
           "calibrate_knobs", "create_attack", "distance", "random_sign", "register_attack", "unit"]
