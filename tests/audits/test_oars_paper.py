"""The ``oars-paper`` form: Feng et al.'s two stages alone. Stage 1's floors hold for the whole attack, and none
of dpplat's additions (escalating floors, tiles chosen per image, HSJA's longer retry, redrawn midpoints, Square's
joint search with dither, NES stepping under its floor) takes part; each test sets up a case where the
addition would act, and checks that the paper's form does without it."""

import math

import torch

from dpplat.audits.attacks import create_attack
from dpplat.audits.attacks.base import Oracle
from dpplat.audits.defenses import create_defense
from tests.audits.synthetic import (BlockRadiusDefense, BlocksChangedDefense, RadiusDefense, RecordingRadiusDefense,
                                   setting)
from tests.audits.test_attacks import ATTACKS


def test_paper_form_keeps_stage_one_floors_and_finest_directions_behind_blacklight(mnist_model, mnist_test):
    """Behind Blacklight the history fills and rejections mount; dpplat's form escalates its floors, the paper's
    keeps stage 1's, with no tile or subspace chosen. Both carry on past rejections."""
    defense = create_defense("blacklight", mnist_model, input_shape=(1, 28, 28))
    escalated = 0
    for name in ATTACKS:
        attack, x, label, target, start = setting(name, mnist_model, mnist_test, 0)
        attack.eps = 0.03  # too small to win: the attack spends its budget against the defense
        paper = attack.attack(defense, x, label, target=target, start=start, mode="oars-paper", budget=3_000)
        assert paper.stopped != "rejected", name
        assert paper.knobs["escalations"] == 0 and paper.knobs["final"] == paper.knobs["stage1"], name
        assert "choices" not in paper.knobs, name
        if name == "square":
            assert paper.knobs["stage1"]["squares"] == 1 and paper.knobs["stage1"]["dither"] == 0.0
        oars = attack.attack(defense, x, label, target=target, start=start, mode="oars", budget=3_000)
        escalated += oars.knobs["escalations"] > 0
    assert escalated >= 1, "the case is one where dpplat's form escalates"


def test_paper_form_keeps_pixel_directions_where_dpplat_coarsens_the_tile(mnist_model, mnist_test):
    """Against block sums at radius 0.35, NES's sigma floor with pixel noise is above half the L-infinity ball, so
    dpplat's form picks 2x2 tiles; the paper's form draws pixel noise and takes the larger floor."""
    _, x, label, target, _ = setting("nes", mnist_model, mnist_test, 0)
    x = 0.25 + 0.5 * x
    defense = BlockRadiusDefense(mnist_model, input_shape=(1, 28, 28), radius=0.35)
    floors = {}
    for mode in ("oars", "oars-paper"):
        attack = create_attack("nes", eps=0.3, seed=1)
        result = attack.attack(defense, x, label, target=target, mode=mode, budget=3_000)
        floors[mode] = result.knobs["stage1"]["sigma"]
        assert attack.tile == (2 if mode == "oars" else 1), mode
    assert floors["oars-paper"] > 0.15 >= floors["oars"]


def test_paper_form_halves_a_rejected_geometric_step(mnist_model, mnist_test):
    """HSJA's own rule for a failed step: a rejected step halves, moving closer to the stored point it collided
    with, so within the defense's radius it never gets through (dpplat's form doubles it and does)."""
    attack, x, label, target, start = setting("hsja", mnist_model, mnist_test, 0)
    v = (start - x) / (start - x).norm()
    defense = RadiusDefense(mnist_model, input_shape=(1, 28, 28), radius=0.5)
    defense.query(start.unsqueeze(0))
    attack.floors, attack.extended = {"min_delta": 0.3}, False
    oracle = Oracle(defense, label=label, target=target, budget=1000, mode="oars-paper")
    assert attack.geometric_step(oracle, start, v, step=0.05) is None
    assert oracle.queries == oracle.rejections == attack.step_halvings


def test_paper_form_ends_a_boundary_search_at_its_first_rejected_midpoint(mnist_model, mnist_test):
    """No redraw: the search stops at the last known adversarial point, here the start image itself."""
    attack, x, label, _, start = setting("surfree", mnist_model, mnist_test, 0)
    defense = RadiusDefense(mnist_model, input_shape=(1, 28, 28), radius=0.4)
    defense.query(((x + start) / 2).unsqueeze(0))
    attack.rng, attack.best, attack.best_distance = attack.generator(0), None, math.inf
    attack.floors, attack.length_knob, attack.extended = {"min_delta": 0.5}, "min_delta", False
    oracle = Oracle(defense, label=label, budget=10_000, mode="oars-paper")
    found = attack.boundary_search(oracle, x, start, tolerance=1e-3)
    assert attack.search_cut_short and oracle.queries == oracle.rejections == 1
    assert torch.allclose(found, start)


def test_paper_square_searches_one_squares_side_without_dither(mnist_model, mnist_test):
    """Where five 7x7 blocks must change, one square needs a side that spans them; dpplat's form paints several
    small squares instead."""
    _, x, label, _, _ = setting("square", mnist_model, mnist_test, 0)
    found = {}
    for extended in (True, False):
        attack = create_attack("square", eps=0.3, seed=1)
        attack.rng, attack.floors, attack.extended = attack.generator(0), {}, extended
        oracle = Oracle(BlocksChangedDefense(mnist_model, input_shape=(1, 28, 28), block=7, radius=5), label=label,
                        mode="oars" if extended else "oars-paper")
        found[extended] = attack.calibrate(oracle, x)
    assert found[False]["squares"] == 1 and found[False]["dither"] == 0.0
    assert found[False]["min_square"] > found[True]["min_square"]


def test_paper_nes_never_steps_below_its_floor(mnist_model, mnist_test):
    """The plateau decay stops at stage 1's step floor, and a rejected step is always rolled back: in the case where
    dpplat's form takes steps under the floor (``test_nes_oars_takes_steps_under_its_floor_and_asks_about_them``),
    every step the paper's form takes is at least the floor."""
    defense = RecordingRadiusDefense(mnist_model, input_shape=(1, 28, 28), radius=0.3)
    attack, x, label, target, _ = setting("nes", mnist_model, mnist_test, 0)
    x = 0.25 + 0.5 * x
    attack.eps, attack.samples, attack.plateau_length = 0.05, 10, 1
    result = attack.attack(defense, x, label, target=target, mode="oars-paper", budget=2_000)
    assert not result.success and result.stopped == "budget"
    floor = result.knobs["final"]["min_lr"]
    rounds = [b for b in defense.batches if len(b) == attack.samples]
    iterates = [(b[:len(b) // 2] + b[len(b) // 2:]).mean(0) / 2 for b in rounds]
    steps = [float((after - before).abs().max()) for before, after in zip(iterates, iterates[1:])]
    assert len(steps) > 50 and any(s > 1e-4 for s in steps)
    assert all(s < 1e-4 or s > 0.7 * floor for s in steps), "every step taken is at least the floor"
