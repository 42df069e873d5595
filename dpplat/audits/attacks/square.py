"""Square Attack (Andriushchenko et al. 2020): untargeted L-infinity random search with square updates.

It starts from vertical stripes of +-eps, then repeatedly proposes setting a random
square window of the perturbation to +-eps (per channel) and keeps the proposal when
the margin loss (log p_true - max other log p) drops; it succeeds when the margin is
negative. The square's side follows the paper's schedule: the fraction ``p`` of pixels
halves at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 (of ``iterations``,
10,000 by default); after that the attack goes on with the last size until it succeeds or the
query budget is spent, as a user with that budget would (stopping at ``iterations`` would leave
most of the budget unused in the OARS form, where redrawn proposals spend queries too).

OARS form: stage 1 sets floors on the square side (``min_square``) and the number of squares per
proposal (``squares``), chosen together, and, only where no squares get through alone, on a faint
inward dither of every pixel (``dither``); a rejected proposal is redrawn (see :meth:`Square.calibrate`).
"""

from __future__ import annotations

import itertools
import math

import torch

from dpplat.audits.attacks.base import Attack, Knob, random_sign, register_attack
from dpplat.audits.attacks.knob_calibration import calibrate_knobs, search_knob

_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def _paint(attack, delta: torch.Tensor, side: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``delta`` (C, H, W) with ``count`` random squares of ``side`` set to +-eps per channel."""
    delta = delta.clone()
    c, h, w = delta.shape
    side = max(1, min(side, h // 2, w // 2))
    for _ in range(count):
        r = int(torch.randint(0, h - side + 1, (1,), generator=generator))
        q = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        delta[:, r:r + side, q:q + side] = attack.eps * random_sign((c, 1, 1), generator)
    return delta


def _dithered(attack, delta: torch.Tensor, amplitude: float, generator: torch.Generator) -> torch.Tensor:
    """``delta`` with every pixel pulled towards the input by ``amplitude`` times a half-normal draw.

    Square changes one small window at a time, so its proposals repeat the current point almost pixel
    for pixel, and a defense that hashes the whole image (Blacklight) rejects them until the window
    covers much of the image (on CIFAR-10 stage 1 took the side to its cap, 16 of 32, with up to 8
    squares a proposal: a random search no longer). A faint dither of every pixel, inwards so the
    proposal stays in the eps-ball, makes each query new to the hash while the square stays small.
    Against a defense that blurs first (PIHA) no dither under half the ball gets through; stage 1 then
    leaves it out, since at that size it would only weaken the perturbation.
    """
    if amplitude <= 0:
        return delta
    pull = amplitude * torch.randn(delta.shape, generator=generator).abs()
    return (delta - pull * delta.sign()).clamp(-attack.eps, attack.eps)


def _stripes(attack, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The paper's initial perturbation: vertical stripes of +-eps, one sign per column and channel."""
    c, h, w = x.shape
    return attack.eps * random_sign((c, 1, w), generator).expand(c, h, w).clone()


def _base(attack, x, generator):
    return x + _stripes(attack, x, generator)


def _proposals(attack, x, current, side: int, count: int, dither: float, n: int,
               generator: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``n`` proposals from the perturbation ``current`` (squares painted, then dithered), and the painted
    perturbations without the dither: the one the attack keeps when a proposal improves the margin."""
    painted, queries = [], []
    for _ in range(n):
        painted.append(_paint(attack, current, side, count, generator))
        queries.append(x + _dithered(attack, painted[-1], dither, generator))
    return torch.stack(queries), painted


def _probe_dither(attack, x, around, value, n, generator):
    return _proposals(attack, x, around - x, attack.min_square, attack.squares, value, n, generator)[0]


def _probe_side(attack, x, around, value, n, generator):
    count, dither = int(attack.floors.get("squares", 1)), attack.floors.get("dither", 0.0)
    return _proposals(attack, x, around - x, int(value), count, dither, n, generator)[0]


def _probe_count(attack, x, around, value, n, generator):
    side, dither = int(attack.floors.get("min_square", 1)), attack.floors.get("dither", 0.0)
    return _proposals(attack, x, around - x, side, int(value), dither, n, generator)[0]


def _margin(scores: torch.Tensor, label: int) -> torch.Tensor:
    logp = scores
    other = logp.clone()
    other[:, label] = -math.inf
    return logp[:, label] - other.amax(1)


@register_attack("square")
class Square(Attack):
    norm = "linf"

    def __init__(self, *, eps: float = 0.05, p_init: float = 0.05, iterations: int = 10_000, min_square: int = 1,
                 squares: int = 1, dither: bool = True, **common) -> None:
        super().__init__(eps=eps, **common)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init is a fraction of the pixels in (0, 1], got {p_init}.")
        if not isinstance(dither, bool):
            raise ValueError(f"dither is true (stage 1 measures it) or false (the squares alone), got {dither!r}.")
        self.p_init, self.iterations, self.min_square, self.squares = p_init, iterations, min_square, squares
        self.dither = dither
        # Sides above half the image leave too few distinct positions: the proposals repeat each other.
        self.knobs = (Knob("dither", 1e-4, eps / 2, _probe_dither, base=_base, optional=True),
                      Knob("min_square", 1, 16, _probe_side, integer=True, base=_base),
                      Knob("squares", 1, 16, _probe_count, integer=True, base=_base))

    def calibrate(self, oracle, x: torch.Tensor) -> dict[str, float]:
        """Stage 1: the smallest painted area (side squared times count) whose proposals get through; the dither
        only where no area does.

        A side searched alone, with one square, then a count at that side, ends wherever one square first
        gets through: behind PIHA on CIFAR-10 that was two squares of side 16, half the image a proposal,
        where eight squares of side 4 (a quarter of the pixels) or four of side 8 got through as well. So each
        side from the smallest, doubling, gets its own count search, and the search stops once a side's single
        square is no smaller than the best area found.

        The dither comes second: it pulls every pixel in from the ball's edge, and, each proposal being judged
        by the margin of its own dithered query, it likely makes the search noisy (the kept margin is the
        luckiest draw, which later proposals must beat). Behind Blacklight on CIFAR-10, with the dither first
        and then one square of side 1 a proposal, Square lost images it won in about 400 queries with two
        squares of side 2; without the dither, sixteen
        squares of side 4 got through and it won its hardest image (4) in 44,890 queries, which every dithered
        run had lost. When nothing gets through even with the dither, side and count take their caps.
        ``dither=False`` leaves the dither out (the squares alone, as in Feng et al.'s OARS).
        """
        dither, side_knob, _ = self.knobs
        if not self.extended:  # the paper's form: the side of one square, no dither
            return {**calibrate_knobs(self, oracle, x, (side_knob,)), "squares": 1, "dither": 0.0}
        floors = {"dither": 0.0}
        best = self._smallest_area(oracle, x, floors)
        if best is None and self.dither:
            floors = calibrate_knobs(self, oracle, x, (dither,))
            best = self._smallest_area(oracle, x, floors)
        side, count = best if best is not None else (int(self.knobs[1].high), int(self.knobs[2].high))
        return {**floors, "min_square": side, "squares": count}

    def _smallest_area(self, oracle, x: torch.Tensor, floors: dict[str, float]) -> tuple[int, int] | None:
        """(side, count) with the smallest side * side * count that gets through, sides doubling; None if none does."""
        _, side_knob, count_knob = self.knobs
        best, best_area = None, math.inf
        side = int(side_knob.low)
        while side <= side_knob.high and side * side < best_area:
            count = search_knob(self, oracle, x, count_knob, {**floors, "min_square": side})
            if count is not None and side * side * count < best_area:
                best, best_area = (side, int(count)), side * side * count
            side *= 2
        return best

    def side(self, i: int, h: int, w: int) -> int:
        p = self.p_init / 2 ** sum(i * 10_000 // max(self.iterations, 1) > t for t in _SCHEDULE)
        return max(int(round(math.sqrt(p * h * w))), 1)

    def _run(self, oracle, x, start) -> None:
        c, h, w = x.shape
        delta = _stripes(self, x, self.rng)

        painted = []  # the undithered perturbation of the last proposal drawn

        def propose_from(current: torch.Tensor, side: int, count: int, dither: float):
            def propose(m: int) -> torch.Tensor:
                queries, painted[:] = _proposals(self, x, current, side, count, dither, m, self.rng)
                return queries.clamp(0, 1)
            return propose

        scores, rejected = oracle.scores((x + delta).clamp(0, 1))
        for _ in range(self.max_resamples):  # OARS: a rejected stripe pattern is redrawn
            if not bool(rejected[0]):
                break
            delta = _stripes(self, x, self.rng)
            scores, rejected = oracle.scores((x + delta).clamp(0, 1))
        margin = float(_margin(scores.view(1, -1), oracle.label)[0])
        self.consider(x, (x + delta).clamp(0, 1).unsqueeze(0), torch.tensor([margin < 0]))
        for i in itertools.count():  # ends at success, or when the oracle says the budget is spent
            if self.done():
                return
            side = max(self.side(i, h, w), int(self.floor("min_square", self.min_square)))
            count = int(self.floor("squares", self.squares))
            xs, scores = self.accepted(oracle, propose_from(delta, side, count, self.floors.get("dither", 0.0)), 1)
            if xs.shape[1] == 0:
                continue
            candidate, scores = xs[0, 0], scores[0]  # one proposal a round: the accepted one was drawn last
            new_margin = float(_margin(scores, oracle.label)[0])
            if new_margin < margin:
                margin, delta = new_margin, painted[0]  # the dither is not kept: it would wear the squares down
                self.consider(x, candidate.unsqueeze(0), torch.tensor([margin < 0]))
