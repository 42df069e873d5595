"""OARS stage 2 in the decision-based attacks' search and step: a rejected binary-search midpoint is redrawn
(turned at its own distance from the input, by first_turn of the floor and up), and HSJA's geometric step
doubles when rejected but is otherwise its own."""

import math

import pytest
import torch

from dpplat.audits.attacks import create_attack
from dpplat.audits.defenses import create_defense
from tests.audits.synthetic import RadiusDefense, setting


def test_oars_boundary_search_redraws_a_rejected_midpoint(mnist_model, mnist_test):
    """The segment's midpoint is already in the history: the search redraws it off the segment by the
    floor and carries on to the boundary instead of stopping at the start image."""
    from dpplat.audits.attacks.base import Oracle

    attack, x, label, _, start = setting("surfree", mnist_model, mnist_test, 0)
    floor = 0.5
    plain = create_defense("none", mnist_model, input_shape=(1, 28, 28))
    defended = RadiusDefense(mnist_model, input_shape=(1, 28, 28), radius=0.8 * floor)
    defended.query(((x + start) / 2).unsqueeze(0))
    found = {}
    for name, defense in (("plain", plain), ("defended", defended)):
        attack.rng, attack.best, attack.best_distance = attack.generator(0), None, math.inf
        attack.floors, attack.length_knob = {"min_delta": floor}, "min_delta"
        oracle = Oracle(defense, label=label, budget=10_000, mode="oars")
        found[name] = attack.boundary_search(oracle, x, start, tolerance=1e-3)
        assert not attack.search_cut_short and int(mnist_model(found[name].unsqueeze(0)).argmax()) != label
    assert oracle.rejections >= 1
    reach = {name: float((point - x).norm()) for name, point in found.items()}
    assert reach["defended"] < 0.8 * float((start - x).norm())
    # the redraws keep their distance from x, and the bracket closes to floor / sqrt(d): the defended search
    # ends within a tenth of the floor of the plain one (a quarter-floor bracket and offset redraws: 0.22)
    assert reach["defended"] <= reach["plain"] + 0.1 * floor


def test_a_redrawn_midpoint_keeps_its_distance_from_the_input():
    attack = create_attack("hsja", eps=0.1)
    attack.rng = attack.generator(0)
    x = torch.full((1, 28, 28), 0.5)
    midpoint = x + 0.1 * torch.randn((1, 28, 28), generator=torch.Generator().manual_seed(1))
    radius = float((midpoint - x).norm())
    for _ in range(20):
        point = attack._redraw_at_radius(x, midpoint, floor=0.5)
        assert float((point - x).norm()) == pytest.approx(radius, rel=1e-5)
        assert 0.4 < float((point - midpoint).norm()) < 0.51  # moved by about the floor (a chord of the turn)


def test_oars_geometric_step_lengthens_when_rejected(mnist_model, mnist_test):
    """A step from a stored x_adv shorter than the defense's radius is rejected however often it halves;
    the OARS step, rejected, doubles until it clears the stored point."""
    from dpplat.audits.attacks.base import Oracle

    attack, x, label, target, start = setting("hsja", mnist_model, mnist_test, 0)
    v = (start - x) / (start - x).norm()  # away from the input: deeper into the target class
    defense = RadiusDefense(mnist_model, input_shape=(1, 28, 28), radius=0.5)
    defense.query(start.unsqueeze(0))  # x_adv is in the history
    attack.floors = {"min_delta": 0.3}
    oracle = Oracle(defense, label=label, target=target, budget=1000, mode="oars")
    candidate = attack.geometric_step(oracle, start, v, step=0.05)
    assert candidate is not None and oracle.rejections >= 1 and oracle.queries == oracle.rejections + 1
    assert float((candidate - start).norm()) >= 0.5, "the accepted step clears the stored point"
    assert int(mnist_model(candidate.unsqueeze(0)).argmax()) == target


def test_oars_geometric_step_below_the_floor_is_tried_as_it_is(mnist_model, mnist_test):
    """Nothing rejects the short step, so HSJA takes it: held at the floor (0.3 here), every step near the
    optimum was as long as the floor, and behind Blacklight that was a quarter of the distance to the input."""
    from dpplat.audits.attacks.base import Oracle

    attack, x, label, target, start = setting("hsja", mnist_model, mnist_test, 0)
    v = (start - x) / (start - x).norm()
    attack.floors = {"min_delta": 0.3}
    oracle = Oracle(create_defense("none", mnist_model, input_shape=(1, 28, 28)), label=label, target=target,
                    budget=1000, mode="oars")
    candidate = attack.geometric_step(oracle, start, v, step=0.05)
    assert candidate is not None and oracle.queries == 1
    assert 0 < float((candidate - start).norm()) <= 0.05 + 1e-6  # clamping to [0, 1] only shortens it


@pytest.mark.parametrize("first_turn, turns", [(0.25, [0.125, 0.25, 0.5]), (1.0, [0.5])])
def test_a_rejected_midpoints_redraws_turn_from_first_turn_up_to_the_floor(first_turn, turns, mnist_model,
                                                                          mnist_test):
    """HSJA searches inside the cloud of its own probes, where a whole-floor turn is a random sideways jump
    along the boundary: its redraws start at a quarter of the floor and double while they are rejected."""
    from dpplat.audits.attacks.base import Oracle

    attack, x, label, target, start = setting("hsja", mnist_model, mnist_test, 0)
    attack.first_turn = first_turn
    floor = 0.5
    defense = RadiusDefense(mnist_model, input_shape=(1, 28, 28), radius=0.8 * floor)
    defense.query(((x + start) / 2).unsqueeze(0))  # the first midpoint is already in the history
    attack.rng, attack.best, attack.best_distance = attack.generator(0), None, math.inf
    attack.floors = {"min_delta": floor}
    used = []
    redraw = attack._redraw_at_radius
    attack._redraw_at_radius = lambda x_, midpoint, turn: used.append(turn) or redraw(x_, midpoint, turn)
    oracle = Oracle(defense, label=label, target=target, budget=10_000, mode="oars")
    found = attack.boundary_search(oracle, x, start, tolerance=1e-3)
    assert used[:len(turns)] == pytest.approx(turns)  # the first midpoint's redraws: within 0.4 until the floor
    assert not attack.search_cut_short and int(mnist_model(found.unsqueeze(0)).argmax()) == target


def test_first_turn_must_be_a_fraction_of_the_floor():
    with pytest.raises(ValueError, match="first_turn"):
        create_attack("hsja", first_turn=0.0)
