"""Directions constant on tiles, and OARS stage 1's choice of how coarse an attack's directions are.

A defense that hashes block statistics (PIHA: blur, then 7x7 block sums) averages independent
pixel noise away, so only noise nearly as large as the budget changes its hash; noise that is
coherent over a tile moves the block sums by the tile's area instead of its square root, and
gets through at a smaller radius. Coarser tiles restrict the directions, though, so they cost
wherever pixel noise gets through. Hence the choice is made per image, in stage 1: the finest
tile whose floor fits. :func:`finest_that_fits` makes that choice; the attacks that draw Gaussian
directions choose a tile through :class:`TiledDirections`, SurFree its DCT subspace. The history fills as
the attack goes on and the floor escalates, so a tiled attack's tile follows its floor in stage 2.
"""

from __future__ import annotations

import math

import torch

from dpplat.audits.attacks.knob_calibration import calibrate_knobs


def tiled_normal(n: int, shape: tuple[int, ...], tile: int, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise, constant on ``tile`` x ``tile`` blocks of each channel (Ilyas et al. 2019's tiling).

    Each pixel still has unit variance, so a radius means the same per-pixel amplitude at any tile,
    and a tile of 1 is ``torch.randn`` draw for draw.
    """
    if tile == 1:
        return torch.randn((n, *shape), generator=generator)
    channels, height, width = shape
    small = torch.randn((n, channels, -(-height // tile), -(-width // tile)), generator=generator)
    return small.repeat_interleave(tile, 2).repeat_interleave(tile, 3)[..., :height, :width]


def checked_coarseness(name: str, unit: str, setting: int | str, options: tuple[int, ...],
                       coarsen_above: float) -> tuple[int | str, tuple[int, ...]]:
    """A coarseness setting (a whole number or "auto"), the options "auto" chooses from, and the share of the budget
    above which it coarsens, checked; returns the setting and the options as whole numbers."""
    if setting != "auto" and (isinstance(setting, str) or int(setting) != setting or setting < 1):
        raise ValueError(f"{name} must be a whole number{unit}, at least 1, or 'auto', got {setting!r}.")
    if not options or any(int(t) != t or t < 1 for t in options):
        raise ValueError(f"auto_{name}s must be whole numbers{unit}, at least 1, finest first; got {options!r}.")
    if not coarsen_above > 0:
        raise ValueError(f"coarsen_above must be > 0 (a fraction of the budget), got {coarsen_above}.")
    return setting, tuple(int(t) for t in options)


def coarseness_in_use(attack, choice: str, setting: int | str, options: tuple[int, ...]) -> int:
    """The coarseness an attack uses now: a fixed setting, else stage 1's choice for this image (recorded in
    ``attack.choices[choice]``), else the finest option (the standard form has no stage 1)."""
    if setting != "auto":
        return int(setting)
    return int(attack.choices.get(choice, options[0]))


def finest_that_fits(attack, oracle, x: torch.Tensor, choice: str, options: tuple, knob: str,
                     limit: float) -> dict[str, float]:
    """OARS stage 1 with a coarseness to choose: measure the floors with each of ``options`` in turn (finest first,
    set as ``attack.choices[choice]``, which the attack's probes and moves read) and keep the first whose floor of
    ``knob`` is at most ``limit``, else the one with the lowest floor. Returns that option's floors."""
    best: tuple[object, dict[str, float]] | None = None
    for option in options:
        attack.choices[choice] = option
        floors = calibrate_knobs(attack, oracle, x)
        if floors[knob] <= limit:
            best = (option, floors)
            break
        if best is None or floors[knob] < best[1][knob]:
            best = (option, floors)
    attack.choices[choice], floors = best
    return floors


class TiledDirections:
    """Mixin for an :class:`~dpplat.audits.attacks.base.Attack` whose queries move along Gaussian directions.

    ``tile`` is a whole number of pixels or ``"auto"``: stage 1 measures the floor of the attack's
    ``tile_knob`` with each of ``auto_tiles`` in turn (finest first) and keeps the first whose floor is
    at most ``coarsen_above`` times the perturbation budget (eps for L-infinity, eps * sqrt(d) as an
    L2 length), else the one with the lowest floor. The choice is recorded in ``choices["tile"]``. In
    stage 2 the tile then follows that floor as it escalates and relaxes (:meth:`_watch`); the result's
    knobs record stage 1's choice and the last. The standard form has no stage 1 and uses the finest tile.
    """

    tile_knob: str = ""
    tile_returns: bool = True  # in stage 2 the tile comes back finer as the floor relaxes (see :meth:`_watch`)

    def _set_tiles(self, tile: int | str, auto_tiles: tuple[int, ...], coarsen_above: float) -> None:
        self.tile_setting, self.auto_tiles = checked_coarseness("tile", " of pixels", tile, auto_tiles, coarsen_above)
        self.coarsen_above = coarsen_above
        self._stage1_tile: tuple[int, float] | None = None  # stage 1's tile and the floor it holds to, per image

    @property
    def tile(self) -> int:
        """The tile in use (:func:`coarseness_in_use`)."""
        return coarseness_in_use(self, "tile", self.tile_setting, self.auto_tiles)

    def noise(self, n: int, shape: tuple[int, ...]) -> torch.Tensor:
        return tiled_normal(n, shape, self.tile, self.rng)

    def tile_limit(self, x: torch.Tensor) -> float:
        """The largest floor of ``tile_knob`` that counts as fitting: a fraction of the budget in the attack's norm."""
        budget = self.eps * math.sqrt(x.numel()) if self.norm == "l2" else self.eps
        return self.coarsen_above * budget

    def calibrate(self, oracle, x: torch.Tensor) -> dict[str, float]:
        """Stage 1, and with ``tile="auto"`` the tile (see the class).

        Measured: on CIFAR-10 behind PIHA, NES's sigma floor with pixel noise was 0.035-0.058 against
        an L-infinity budget of 0.05, and Boundary's spherical floor 1.7-3.3 on three of eight images
        against an L2 budget of 2.8; 2x2 tiles about halved both. Undefended, NES won 4 of 4 images
        with pixel noise, 3 with 2x2 tiles and 2 with 4x4 tiles, hence NES's ``auto_tiles=(1, 2)``;
        Boundary's walk does not suffer from 4x4 tiles and goes up to them (see its module).
        """
        if self.tile_setting != "auto" or not self.extended:  # the paper's form keeps the finest tile
            return calibrate_knobs(self, oracle, x)
        limit = self.tile_limit(x)
        floors = finest_that_fits(self, oracle, x, "tile", self.auto_tiles, self.tile_knob, limit)
        self._stage1_tile = (self.choices["tile"], max(limit, floors[self.tile_knob]))
        return floors

    def _watch(self, queries: int, rejected: int) -> None:
        """Stage 2's escalation, and with ``tile="auto"`` the tile following the floor of ``tile_knob``: stage 1's
        tile while the floor is within the limit stage 1 chose it by (or within stage 1's floor, where none fit),
        one option coarser in ``auto_tiles`` for each doubling beyond it, and, where ``tile_returns``, back
        again as the floor relaxes.

        Stage 1 measures the floor on an empty history; the history fills and the floor escalates, and the
        tile chosen for the first floor stops fitting. Measured on CIFAR-10 behind Blacklight and PIHA, 16
        images (``benchmarks/results/oars-cifar10-cpu-tile-follows-floor.md``): HSJA kept pixel directions on
        one image behind PIHA at a floor of 0.90 (limit 1.39), escalated it 18 times to the cap and lost at
        0.213; following the floor it won in 1,397 queries. The decision-based attacks need the way back: with
        the coarser tile kept for good, HSJA lost two images behind PIHA that pixel directions win (presumably
        the last stretch along the boundary wants fine directions once the defense lets them through), and
        Boundary won one image fewer. NES did better without it (14 of 16 behind each defense, against 13 and
        12 with it), so NES keeps the coarser tile; these choices were made on the same 16 images. On eight
        held-out images each rule won at least as many as the code before it: HSJA behind PIHA 8 against 6, NES
        behind PIHA 4 against 3, the other cells equal.
        """
        super()._watch(queries, rejected)
        if self.tile_setting != "auto" or self._stage1_tile is None:
            return
        tile, reference = self._stage1_tile
        floor = self.floors[self.tile_knob]
        steps = math.ceil(math.log2(floor / reference)) if floor > reference else 0
        index = min(self.auto_tiles.index(tile) + steps, len(self.auto_tiles) - 1)
        if not self.tile_returns:
            index = max(index, self.auto_tiles.index(self.tile))
        self.choices["tile"] = self.auto_tiles[index]
