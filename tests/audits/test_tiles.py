"""Tiled directions (NES, HSJA, Boundary): the tiles themselves, the lower floor they find behind PIHA, and stage 1's
choice of tile; SurFree's choice of subspace, made the same way."""

import pytest
import torch

from dpplat.audits.attacks import create_attack
from dpplat.audits.defenses import create_defense
from tests.audits.synthetic import BlockRadiusDefense, RecordingRadiusDefense, setting


def test_tiled_directions_are_constant_on_blocks_with_unit_variance():
    from dpplat.audits.attacks.tiles import tiled_normal

    noise = tiled_normal(400, (3, 10, 10), 4, torch.Generator().manual_seed(0))
    assert noise.shape == (400, 3, 10, 10)
    assert torch.equal(noise[:, :, :4, :4], noise[:, :, :1, :1].expand(-1, -1, 4, 4))
    assert torch.equal(noise[:, :, 8:, 8:], noise[:, :, 8:9, 8:9].expand(-1, -1, 2, 2))  # the ragged edge
    assert not torch.equal(noise[:, 0], noise[:, 1]), "channels are drawn apart"
    assert float(noise.var()) == pytest.approx(1.0, abs=0.1)
    assert torch.equal(tiled_normal(3, (3, 10, 10), 1, torch.Generator().manual_seed(0)),
                       torch.randn((3, 3, 10, 10), generator=torch.Generator().manual_seed(0))), "tile 1 is randn"


def test_tiled_probes_get_past_piha_at_a_smaller_radius(mnist_model, mnist_test):
    """PIHA blurs and sums blocks, which averages independent pixel noise away; noise constant on
    4x4 tiles moves the block sums as a whole, so stage 1 finds a lower sigma floor."""
    from dpplat.audits.attacks.base import Oracle
    from dpplat.audits.attacks.knob_calibration import calibrate_knobs

    _, x, label, target, _ = setting("nes", mnist_model, mnist_test, 0)
    floors = {}
    for tile in (1, 4):
        defense = create_defense("piha", mnist_model, input_shape=(1, 28, 28))
        attack = create_attack("nes", eps=0.3, tile=tile, seed=1)
        attack.rng, attack.floors = attack.generator(0), {}
        floors[tile] = calibrate_knobs(attack, Oracle(defense, label=label, target=target, mode="oars"), x)
    assert floors[4]["sigma"] < 0.75 * floors[1]["sigma"]
    assert floors[4]["min_lr"] < 0.9 * floors[1]["min_lr"]


# (attack, eps, the knob that decides, half the budget as that knob measures it, stage-1 budget)
NES_CASE = ("nes", 0.3, "sigma", 0.5 * 0.3, 600)
BOUNDARY_CASE = ("boundary", 0.1, "min_spherical", 0.5 * 0.1 * 28, 400)
HSJA_CASE = ("hsja", 0.1, "min_delta", 0.5 * 0.1 * 28, 400)


@pytest.mark.parametrize("case,radius,tiles,tile,fits", [
    (NES_CASE, 0.1, (1, 2), 1, True), (NES_CASE, 0.35, (1, 2), 2, True), (NES_CASE, 0.7, (1, 2, 4), 4, True),
    (NES_CASE, 0.7, (1, 2), 2, False), (BOUNDARY_CASE, 0.05, (1, 2), 1, True), (BOUNDARY_CASE, 0.12, (1, 2), 2, True),
    (BOUNDARY_CASE, 0.25, (1, 2, 4), 4, True), (BOUNDARY_CASE, 0.25, (1, 2), 2, False),
    (HSJA_CASE, 0.05, (1, 2), 1, True), (HSJA_CASE, 0.12, (1, 2), 2, True), (HSJA_CASE, 0.25, (1, 2, 4), 4, True),
    (HSJA_CASE, 0.25, (1, 2), 2, False)])
def test_auto_tile_is_the_finest_whose_floor_fits_in_half_the_budget(case, radius, tiles, tile, fits, mnist_model,
                                                                     mnist_test):
    """Else the one with the lowest floor (where none fits).

    NES: half the L-infinity ball is 0.15; at radius 0.7 the sigma floor with 2x2 tiles is 0.27.
    Boundary: half the L2 budget is eps * sqrt(d) / 2 = 1.4; the spherical floors against this defense
    were about 20, 10 and 4 times its radius with tiles of 1, 2 and 4 (radius 0.05: 0.98 with pixel
    noise; 0.12: 2.29 and 1.14; 0.25: 2.29 with 2x2 tiles, 1.06 with 4x4). HSJA's radius floor is an L2
    length as well, probed with the same unit directions. The attack's moves use the chosen tile, and
    the standard form, which has no stage 1, the finest.
    """
    name, eps, knob, limit, budget = case
    _, x, label, target, start = setting(name, mnist_model, mnist_test, 0)
    x = 0.25 + 0.5 * x  # away from 0 and 1, so clamping does not shorten the probes
    goal = {"target": target, "start": start} if name == "hsja" else {"target": target} if name == "nes" \
        else {"start": start}
    defense = BlockRadiusDefense(mnist_model, input_shape=(1, 28, 28), radius=radius)
    fixed = create_attack(name, eps=eps, tile=1, seed=1).attack(defense, x, label, mode="oars", budget=budget, **goal)
    auto = create_attack(name, eps=eps, tile="auto", auto_tiles=tiles, seed=1)
    result = auto.attack(defense, x, label, mode="oars", budget=5 * budget, **goal)
    assert result.knobs["choices"] == {"tile": tile}
    assert (result.knobs["stage1"][knob] <= limit) == fits
    if tile == 1:  # the finest tile fits: the same stage 1 as a fixed tile of 1, draw for draw
        assert result.knobs["stage1"] == fixed.knobs["stage1"]
    else:
        assert fixed.knobs["stage1"][knob] > limit
        noise = auto.noise(2, (1, 28, 28))
        assert torch.equal(noise[:, :, :tile, :tile], noise[:, :, :1, :1].expand(-1, -1, tile, tile))
    standard = auto.attack(defense, x, label, budget=200, **goal)
    assert auto.tile == 1 and standard.knobs == {}, "the standard form has no stage 1 and keeps the finest tile"


@pytest.mark.parametrize("radius,ratios,ratio,fits", [(0.05, (2, 4), 2, True), (0.15, (2, 4), 4, True),
                                                     (0.3, (2, 4), 4, False), (0.15, (2,), 2, False)])
def test_surfree_auto_subspace_is_the_finest_whose_angle_move_fits(radius, ratios, ratio, fits, mnist_model,
                                                                  mnist_test):
    """An angle floor fits when its move, the reference radius times its sine, is within 0.35 of the L2 budget
    (0.98 at eps 0.1). Against this defense the moves were: radius 0.05, 0.49 with ratio 2; radius 0.15, 1.49 with
    ratio 2 and 0.79 with ratio 4; radius 0.3, 2.95 and 1.59. The directions then lie in the chosen subspace."""
    import math

    from dpplat.audits.attacks.qeba import dct_matrix

    _, x, label, _, start = setting("surfree", mnist_model, mnist_test, 0)
    x = 0.25 + 0.5 * x
    defense = BlockRadiusDefense(mnist_model, input_shape=(1, 28, 28), radius=radius)
    auto = create_attack("surfree", eps=0.1, auto_ratios=ratios, seed=1)
    result = auto.attack(defense, x, label, start=start, mode="oars", budget=1_500)
    assert result.knobs["choices"] == {"ratio": ratio}
    move = float((start - x).norm()) * math.sin(result.knobs["stage1"]["min_angle"])
    assert (move <= 0.35 * 0.1 * 28) == fits
    direction = auto._direction(torch.zeros(1, 28, 28), [])  # unit, and orthogonal to nothing
    spectrum = dct_matrix(28) @ direction[0] @ dct_matrix(28).T
    kept = 28 // ratio
    assert float(spectrum[:kept, :kept].norm()) == pytest.approx(1.0, abs=1e-4), "only the kept frequencies"
    standard = auto.attack(defense, x, label, start=start, budget=200)
    assert auto.ratio == ratios[0] and standard.knobs == {}, "the standard form keeps the finest subspace"


def test_surfree_subspace_settings_are_checked():
    for bad in (0, 2.5, "coarse"):
        with pytest.raises(ValueError, match="ratio must be"):
            create_attack("surfree", ratio=bad)
    with pytest.raises(ValueError, match="auto_ratios"):
        create_attack("surfree", auto_ratios=())
    with pytest.raises(ValueError, match="coarsen_above"):
        create_attack("surfree", coarsen_above=-1)


def test_hsja_moves_on_the_chosen_tile_and_qeba_keeps_its_subspace():
    """HSJA's gradient-estimation directions and its redraws follow the tile; QEBA's subspace already makes its
    directions coarse, so it refuses a tile rather than ignore one."""
    hsja = create_attack("hsja", tile=4)
    hsja.rng = torch.Generator().manual_seed(0)
    for moves in (hsja.directions(2, (1, 28, 28), torch.Generator().manual_seed(0)), hsja.noise(2, (1, 28, 28))):
        assert torch.equal(moves[:, :, 4:8, 4:8], moves[:, :, 4:5, 4:5].expand(-1, -1, 4, 4))
    assert create_attack("qeba").tile == 1
    for setting_ in ({"tile": 2}, {"tile": "auto"}, {"auto_tiles": (1, 2)}, {"coarsen_above": 0.3}):
        with pytest.raises(ValueError, match="QEBA .* has no tiles"):
            create_attack("qeba", **setting_)


@pytest.mark.parametrize("name", ["nes", "hsja", "boundary"])
def test_tile_settings_are_checked(name):
    for bad in (0, 2.5, "coarse"):
        with pytest.raises(ValueError, match="tile must be"):
            create_attack(name, tile=bad)
    with pytest.raises(ValueError, match="coarsen_above"):
        create_attack(name, tile="auto", coarsen_above=0)
    with pytest.raises(ValueError, match="auto_tiles"):
        create_attack(name, tile="auto", auto_tiles=())


def test_the_tile_follows_the_floor_past_the_limit_and_back():
    """Stage 1 chose the tile for the floor on an empty history; each doubling of the floor beyond the limit the
    tile was chosen by moves one option coarser, and a relaxed floor moves back. Where no tile fitted, stage 1's
    floor is the reference instead of the limit. A fixed tile stays, and NES keeps the coarser tile."""
    def in_stage2(attack, floors, stage1_tile=None, limit=0.0):  # as Attack.attack leaves it after stage 1
        attack.floors, attack._stage1, attack._window, attack.escalations = dict(floors), dict(floors), [0, 0], 0
        if stage1_tile is not None:  # tile="auto": stage 1 chose a tile by a limit (a fixed tile chooses none)
            attack.choices = {"tile": stage1_tile}
            attack._stage1_tile = (stage1_tile, max(limit, floors[attack.tile_knob]))
        return attack

    def watched(stage1_tile, stage1_floor):  # HSJA at eps 0.1 on MNIST: the limit is half of 0.1 * 28
        attack = create_attack("hsja", eps=0.1, auto_tiles=(1, 2, 4), escalate_window=100, relax_below=0.1)
        return in_stage2(attack, {"min_delta": stage1_floor}, stage1_tile, 1.4)

    attack = watched(1, 0.5)
    tiles = []
    for rejected in (60, 20, 60, 0, 60, 60, 60, 0, 0, 0):  # over half: double; under a tenth: halve
        attack._watch(100, rejected)
        tiles.append((attack.floors["min_delta"], attack.tile))
    assert tiles == [(1.0, 1), (1.0, 1), (2.0, 2), (1.0, 1), (2.0, 2), (4.0, 4), (8.0, 4), (4.0, 4), (2.0, 2),
                     (1.0, 1)]
    unfitted = watched(2, 2.0)  # stage 1 found no tile under the limit and kept tile 2 at floor 2.0
    unfitted._watch(100, 0)  # relaxing never goes under stage 1's floor, or finer than its tile
    assert unfitted.tile == 2
    unfitted._watch(100, 60)
    assert unfitted.floors["min_delta"] == 4.0 and unfitted.tile == 4
    fixed = in_stage2(create_attack("hsja", eps=0.1, tile=1), {"min_delta": 0.5})
    for _ in range(4):
        fixed._watch(100, 60)
    assert fixed.floors["min_delta"] == 8.0 and fixed.tile == 1
    nes = in_stage2(create_attack("nes", eps=0.05, escalate_window=100, relax_below=0.1),  # keeps the coarser tile
                    {"sigma": 0.02, "min_lr": 0.01}, 1, 0.025)
    nes._watch(100, 60)
    assert nes.floors["sigma"] == 0.04 and nes.tile == 2
    nes._watch(100, 0)
    assert nes.floors["sigma"] == 0.02 and nes.tile == 2


class GrowingBlockRadiusDefense(BlockRadiusDefense, RecordingRadiusDefense):
    """BlockRadiusDefense whose radius grows once it has answered ``after`` queries: the history filling up,
    as a real defense's does, so that a floor stage 1 measured on an empty history stops being enough. It keeps
    the batches it was asked, in order (RecordingRadiusDefense)."""

    def __init__(self, model, *, input_shape, radius, grown, after, **kw):
        super().__init__(model, input_shape=input_shape, radius=radius, **kw)
        self.start_radius, self.grown, self.after = radius, grown, after

    def _clear(self):
        super()._clear()
        self.radius = getattr(self, "start_radius", self.radius)

    def _lookup(self, digests, i):
        if self.stats.queries > self.after:
            self.radius = self.grown
        return super()._lookup(digests, i)


def test_hsja_coarsens_its_tile_when_the_floor_escalates_past_the_limit(mnist_model, mnist_test):
    """Radius 0.05 lets pixel directions through at a floor under the limit (1.4); once the history has grown the
    radius to 0.25 they need a floor of about 5, 4x4 tiles one of about 1 (see the stage-1 test above). Stage 1
    keeps pixel directions, and after the growth the gradient estimates are drawn on coarser tiles."""
    _, x, label, target, start = setting("hsja", mnist_model, mnist_test, 0)
    x = 0.25 + 0.5 * x
    defense = GrowingBlockRadiusDefense(mnist_model, input_shape=(1, 28, 28), radius=0.05, grown=0.25, after=600)
    attack = create_attack("hsja", eps=0.1, auto_tiles=(1, 2, 4), seed=1)
    result = attack.attack(defense, x, label, target=target, start=start, mode="oars", budget=3_000)
    assert result.knobs["choices"] == {"tile": 1} and result.knobs["stage1"]["min_delta"] <= 1.4
    assert result.knobs["escalations"] > 0 and "final_choices" in result.knobs

    def on_2x2_tiles(batch):  # a gradient estimate's spread about its mean is its directions'
        def blocks(t):
            return t[:, 0].unfold(1, 2, 2).unfold(2, 2, 2).flatten(3)

        moves, inside = blocks(batch - batch.mean(0, keepdim=True)), blocks(((batch > 0) & (batch < 1)).float())
        unclamped = inside.amin(3).amin(0) > 0  # blocks no query was clamped in (the start's background is 0)
        constant = (moves.amax(3) - moves.amin(3) < 1e-6).all(0)
        return bool(unclamped.sum() > 20) and bool(constant[unclamped].all())

    asked, tiled = 0, []
    for batch in defense.batches:
        if len(batch) >= 50:  # a gradient estimate, not a stage-1 probe set (20) or a single search query
            tiled.append((asked > 600, on_2x2_tiles(batch)))
        asked += len(batch)
    assert not any(t for grown, t in tiled if not grown), "pixel directions while the floor fits"
    assert any(t for grown, t in tiled if grown), "coarser directions once the floor has passed the limit"
