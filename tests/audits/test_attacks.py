"""Black-box attacks: each succeeds with no defense, each standard form stops at a rejection,
and OARS stage 1 finds a rejection radius we set."""

import math

import pytest
import torch

from dpplat.audits.attacks import available_attacks, create_attack
from dpplat.audits.defenses import create_defense
from tests.audits.synthetic import (BlocksChangedDefense, RadiusDefense, RecordingRadiusDefense, RejectAfter,
                                   RejectFirstOfBatch, setting)

ATTACKS = ["nes", "square", "hsja", "qeba", "surfree", "boundary"]


@pytest.mark.parametrize("name", ATTACKS)
def test_each_attack_succeeds_without_a_defense(name, mnist_model, mnist_test):
    defense = create_defense("none", mnist_model, input_shape=(1, 28, 28))
    for i in range(2):
        attack, x, label, target, start = setting(name, mnist_model, mnist_test, i)
        result = attack.attack(defense, x, label, target=target, start=start, budget=20_000, image_index=i)
        assert result.success, (name, result.stopped, result.distance, result.queries)
        assert result.distance <= attack.eps * (1 + 1e-5) and result.queries <= 20_000
        predicted = int(mnist_model(result.x_adv.unsqueeze(0)).argmax())
        assert predicted == target if attack.targeted else predicted != label


@pytest.mark.parametrize("name", ATTACKS)
def test_each_standard_attack_stops_at_the_first_rejection(name, mnist_model, mnist_test):
    defense = RejectAfter(mnist_model, input_shape=(1, 28, 28), n=5)
    attack, x, label, target, start = setting(name, mnist_model, mnist_test, 0)
    attack.eps = 0.03  # too small to win within the five accepted queries
    result = attack.attack(defense, x, label, target=target, start=start, budget=20_000)
    assert result.stopped == "rejected" and result.rejections >= 1
    assert result.queries <= 5 + 1000  # the batch holding the first rejection, at most
    oars = attack.attack(defense, x, label, target=target, start=start, mode="oars", budget=2_000)
    assert oars.stopped != "rejected" and oars.queries >= 1_000, "the OARS form carries on past rejections"


@pytest.mark.parametrize("name,attribute,scale", [("hsja", "min_delta", 1.0), ("nes", "sigma", math.sqrt(784)),
                                                  ("boundary", "min_spherical", 1.0)])
def test_oars_stage_one_recovers_the_rejection_radius(name, attribute, scale, mnist_model, mnist_test):
    """Probes are rejected exactly when within ``radius`` of the input, so the floor lands on the radius."""
    radius = 2.0
    defense = RadiusDefense(mnist_model, input_shape=(1, 28, 28), radius=radius)
    attack, x, label, target, start = setting(name, mnist_model, mnist_test, 0)
    x = 0.25 + 0.5 * x  # away from 0 and 1, so clamping does not shorten the probes
    attack.search_steps = 16
    result = attack.attack(defense, x, label, target=target, start=start, mode="oars", budget=2_000)
    assert result.knobs["stage1"][attribute] * scale == pytest.approx(radius, rel=0.08)


@pytest.mark.parametrize("rejected,target_rate,passes", [(1, 0.05, False), (1, 0.1, True), (5, 0.25, False),
                                                         (4, 0.25, True)])
def test_stage_one_passes_a_value_only_below_the_target_rate(rejected, target_rate, passes, mnist_model, mnist_test):
    """``rejected`` of every 20 probes are turned away whatever the radius: below the target rate the radius comes
    down to its low end, at the rate stage 1 finds no floor. (5 of 20 passed 25% as a float32 mean, 1 of 20 failed 5%.)"""
    from dpplat.audits.attacks.base import Oracle
    from dpplat.audits.attacks.knob_calibration import search_knob

    _, x, label, target, _ = setting("hsja", mnist_model, mnist_test, 0)
    attack = create_attack("hsja", eps=0.15, tile=1, target_rate=target_rate, seed=1)
    attack.rng = attack.generator(0)
    defense = RejectFirstOfBatch(mnist_model, input_shape=(1, 28, 28), n=rejected)
    knob = attack.knobs[0]
    floor = search_knob(attack, Oracle(defense, label=label, target=target, mode="oars"), x, knob, {})
    if passes:
        assert floor is not None and floor < 2 * knob.low
    else:
        assert floor is None
    assert defense.stats.rejections == rejected * defense.stats.queries // attack.probes


def test_oars_beats_blacklight_where_the_standard_form_fails(mnist_model, mnist_test):
    defense = create_defense("blacklight", mnist_model, input_shape=(1, 28, 28))
    attack, x, label, target, _ = setting("nes", mnist_model, mnist_test, 0)
    standard = attack.attack(defense, x, label, target=target, budget=5_000)
    oars = attack.attack(defense, x, label, target=target, mode="oars", budget=5_000)
    assert not standard.success and standard.stopped == "rejected"
    assert oars.success and oars.rejections > 0


def test_bad_inputs_are_refused_clearly(mnist_model, mnist_test):
    defense = create_defense("none", mnist_model, input_shape=(1, 28, 28))
    x = mnist_test[0][0]
    with pytest.raises(ValueError, match="unknown attack 'nse'"):
        create_attack("nse")
    with pytest.raises(ValueError, match="budget"):
        create_attack("square").attack(defense, x, 1, budget=0)
    with pytest.raises(ValueError, match="one image"):
        create_attack("square").attack(defense, x.unsqueeze(0), 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        create_attack("square").attack(defense, x * 255, 1)
    with pytest.raises(ValueError, match="targeted"):
        create_attack("nes").attack(defense, x, 1)
    with pytest.raises(ValueError, match=r"target_rate .* in \(0, 1\)"):
        create_attack("hsja", target_rate=0)
    with pytest.raises(ValueError, match="start="):
        create_attack("hsja").attack(defense, x, 1, target=2)
    with pytest.raises(ValueError, match="mode"):
        create_attack("square").attack(defense, x, 1, mode="adaptive")
    with pytest.raises(ValueError, match="eps"):
        create_attack("square", eps=0)
    with pytest.raises(ValueError, match="dither"):
        create_attack("square", dither="yes")
    assert set(ATTACKS) <= set(available_attacks())


def test_oars_floors_double_under_rejections_and_relax_back_to_stage_one():
    """Stage 2 follows the attack's own rejection rate both ways, never below what stage 1 measured."""
    attack = create_attack("hsja", eps=0.1, escalate_window=100, relax_below=0.1)
    attack.floors = {"min_delta": 0.5}
    attack._window, attack.escalations, attack._stage1 = [0, 0], 0, {"min_delta": 0.5}
    attack._watch(100, 60)  # over half rejected: double
    attack._watch(100, 80)
    assert attack.floors["min_delta"] == 2.0 and attack.escalations == 2
    attack._watch(100, 30)  # in between: hold
    assert attack.floors["min_delta"] == 2.0
    attack._watch(50, 2)  # not a full window yet
    assert attack.floors["min_delta"] == 2.0
    attack._watch(50, 2)  # 4% rejected: halve
    assert attack.floors["min_delta"] == 1.0
    for _ in range(5):
        attack._watch(100, 0)
    assert attack.floors["min_delta"] == 0.5, "never below stage 1's floor"
    for _ in range(20):
        attack._watch(100, 100)
    assert attack.floors["min_delta"] == 20.0, "capped at the knob's high end"


def test_square_spends_the_whole_budget_after_its_schedule(mnist_model, mnist_test):
    """The p schedule spans ``iterations``; an attack that has not won by then goes on at the last
    square size until the budget is spent, rather than stopping with most of the budget unused."""
    defense = create_defense("none", mnist_model, input_shape=(1, 28, 28))
    attack, x, label, target, start = setting("square", mnist_model, mnist_test, 0)
    attack.eps, attack.iterations = 0.01, 50  # too small to win
    result = attack.attack(defense, x, label, budget=400)
    assert not result.success and result.stopped == "budget" and result.queries == 400
    assert attack.side(10_000, 28, 28) == attack.side(49, 28, 28)  # the last size, held


def test_nes_oars_takes_steps_under_its_floor_and_asks_about_them(mnist_model, mnist_test):
    """Held at stage 1's step floor, sign steps oscillate around the optimum (CIFAR-10 behind Blacklight: the
    target's log-probability hovered near -1 for 90,000 queries), so the plateau decay takes the step under the
    floor. Such a step is taken even when the defense rejects it as a repeat of the iterate, but it is still
    asked about: an accepted answer is its loss and may be the success (behind PIHA, a step taken without asking
    was never seen to win, and an image lost at 100,000 queries was won in 4,344)."""
    defense = RecordingRadiusDefense(mnist_model, input_shape=(1, 28, 28), radius=0.3)
    attack, x, label, target, _ = setting("nes", mnist_model, mnist_test, 0)
    x = 0.25 + 0.5 * x  # no clamping at 0 or 1: a pair's midpoint is the iterate
    attack.eps, attack.samples, attack.plateau_length = 0.05, 10, 1  # a ball too small to win in: the loss plateaus
    result = attack.attack(defense, x, label, target=target, mode="oars", budget=2_000)
    assert not result.success and result.stopped == "budget"
    floor = result.knobs["final"]["min_lr"]
    rounds = [(k, b) for k, b in enumerate(defense.batches) if len(b) == attack.samples]  # stage 1 asks 20 at a time
    iterates = [(b[:len(b) // 2] + b[len(b) // 2:]).mean(0) / 2 for _, b in rounds]
    steps = [float((after - before).abs().max()) for before, after in zip(iterates, iterates[1:])]
    assert len(iterates) > 50
    assert any(1e-4 < s < 0.7 * floor for s in steps), "the step decays under the floor"
    assert all(s < 1e-4 or s > 0.7 * floor for s in steps[:5]), "it starts at the floor"
    short_steps = {"accepted": 0, "rejected": 0}
    for (k, _), centre, (following, _), next_centre in zip(rounds, iterates, rounds[1:], iterates[1:]):
        asked = defense.batches[k + 1]  # the step candidate, asked after its iterate's pairs
        if len(asked) != 1 or float((asked[0] - centre).abs().max()) > 0.7 * floor or following != k + 2:
            continue
        assert torch.allclose(next_centre, asked[0], atol=1e-5), "a short step is taken whatever the answer"
        short_steps["rejected" if bool(defense.rejected[k + 1][0]) else "accepted"] += 1
    assert short_steps["accepted"] > 0 and short_steps["rejected"] > 0, short_steps


def test_nes_asks_again_for_an_adversarial_probe_reflected_into_the_ball(mnist_model, mnist_test):
    """Sign steps drive the iterate to a corner of the eps-ball, so half of each probe's noise points out of
    it. An adversarial probe inside the ball is a success as it stands; one outside is reflected in, which
    keeps each pixel's distance from the iterate (clamping would undo the noise there), and asked again."""
    from dpplat.audits.attacks.base import Oracle, random_sign

    attack, x, label, target, _ = setting("nes", mnist_model, mnist_test, 0)
    x, attack.eps = 0.25 + 0.5 * x, 0.05
    low, high = x - attack.eps, x + attack.eps
    corner = x + attack.eps * random_sign(x.shape, torch.Generator().manual_seed(0))
    probe = corner + 0.01 * torch.randn((1, *x.shape), generator=torch.Generator().manual_seed(1))
    says_target = torch.full((1, 10), -10.0).index_fill_(1, torch.tensor([target]), 0.0)
    defense = RecordingRadiusDefense(mnist_model, input_shape=(1, 28, 28), radius=0.0)  # records, rejects nothing
    oracle = Oracle(defense, label=label, target=target, budget=100, mode="oars")
    attack.best, attack.best_distance = None, math.inf
    attack._check_probes(oracle, x, probe, says_target, low, high)
    (asked,) = defense.batches
    assert bool(((asked >= low - 1e-6) & (asked <= high + 1e-6)).all()), "the reflection lies in the ball"
    assert torch.allclose((asked[0] - corner).abs(), (probe[0] - corner).abs(), atol=1e-6)
    assert float((asked[0] - probe[0]).abs().max()) > 1e-3, "the probe did leave the ball"

    inside = corner.clamp(low, high) - 0.01 * (corner - x).sign()
    attack._check_probes(oracle, x, inside.unsqueeze(0), says_target, low, high)
    assert len(defense.batches) == 1 and attack.done(), "a probe inside the ball wins without another query"


def test_square_oars_dithers_only_where_squares_alone_do_not_get_through(mnist_model):
    """A square repaints a pixel to the value it had half the time, so however many squares a proposal has,
    it changes about half the pixels at most; the faint inward dither changes every one. Behind a defense
    that wants three quarters of the pixels changed, stage 1 takes the dither, and with it the smallest
    squares; without it, side and count take their caps. (Where squares alone get through, the dither is
    left out: see ``Square.calibrate``.)"""
    from dpplat.audits.attacks.base import Oracle
    from dpplat.audits.attacks.square import _dithered

    x = torch.full((1, 28, 28), 0.5)  # no pixel at the edge of [0, 1], where clamping would undo a change
    for dither in (True, False):
        attack = create_attack("square", eps=0.3, seed=1, dither=dither)
        attack.rng, attack.floors = attack.generator(0), {}
        defense = BlocksChangedDefense(mnist_model, input_shape=(1, 28, 28), block=1, radius=600)  # pixels
        floors = attack.calibrate(Oracle(defense, label=0, mode="oars"), x)
        if dither:
            assert 0 < floors["dither"] < 0.3 / 2 and (floors["min_square"], floors["squares"]) == (1, 1), floors
        else:
            assert floors == {"dither": 0.0, "min_square": 16, "squares": 16}

    delta = 0.3 * torch.sign(torch.randn(1, 28, 28))
    moved = _dithered(attack, delta, 0.05, torch.Generator().manual_seed(0))
    assert bool((moved.abs() <= 0.3).all()) and bool((moved * delta > 0).all()), "pulled inwards, in the ball"
    assert 0.02 < float((delta - moved).abs().mean()) < 0.06  # about 0.05 * E|N(0, 1)| = 0.04


def test_square_oars_chooses_side_and_count_together(mnist_model, mnist_test):
    """Stage 1 keeps the smallest painted area that gets through. Searching the side with one square first
    ends at a square large enough to change five blocks on its own; many small squares do it with a
    fraction of the pixels (behind PIHA on CIFAR-10: eight squares of side 4 where it had taken two of 16).
    The dither would change every block too, but is left out where squares alone get through."""
    from dpplat.audits.attacks.base import Oracle
    from dpplat.audits.attacks.knob_calibration import calibrate_knobs

    for i in range(2):
        _, x, label, _, _ = setting("square", mnist_model, mnist_test, i)
        area = {}
        for joint in (True, False):
            attack = create_attack("square", eps=0.3, seed=1)
            attack.rng, attack.floors = attack.generator(i), {}
            oracle = Oracle(BlocksChangedDefense(mnist_model, input_shape=(1, 28, 28), block=7, radius=5),
                            label=label, mode="oars")
            floors = attack.calibrate(oracle, x) if joint else calibrate_knobs(attack, oracle, x, attack.knobs[1:])
            area[joint] = floors["min_square"] ** 2 * floors["squares"]
            if joint:
                assert floors["squares"] >= 5, "five blocks need several squares"
                assert floors["dither"] == 0.0, "squares alone get through, so no dither"
        assert area[True] < area[False] / 2, area

        attack = create_attack("square", eps=0.3, seed=1)
        attack.rng, attack.floors = attack.generator(i), {}
        undefended = attack.calibrate(Oracle(create_defense("none", mnist_model, input_shape=(1, 28, 28)),
                                             label=label, mode="oars"), x)
        assert (undefended["min_square"], undefended["squares"]) == (1, 1), "the lowest value can be the floor"


def test_stage_one_leaves_out_an_optional_knob_that_never_gets_through(mnist_model, mnist_test):
    """Square's dither only helps its squares through; where even its largest value is rejected (here:
    everything is), it is left out (0) instead of pulling every pixel half the ball inwards."""
    from dpplat.audits.attacks.base import Oracle
    from dpplat.audits.attacks.knob_calibration import calibrate_knobs

    _, x, label, _, _ = setting("square", mnist_model, mnist_test, 0)
    attack = create_attack("square", eps=0.3, seed=1)
    attack.rng, attack.floors = attack.generator(0), {}
    floors = attack.calibrate(Oracle(RejectAfter(mnist_model, input_shape=(1, 28, 28), n=0), label=label,
                                     mode="oars"), x)
    assert floors == {"dither": 0.0, "min_square": 16, "squares": 16}
