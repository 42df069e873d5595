"""Stateful defenses: they catch repeats and near-repeats, let distinct benign images through, and say so."""

import numpy as np
import pytest
import torch

from dpplat.audits.defenses import Blacklight, available_defenses, create_defense
from dpplat.audits.defenses.blacklight import _scramble
from dpplat.audits.target import pixel_images
from tests.audits.conftest import Flat

SHAPES = {"mnist": (1, 28, 28), "cifar10-jpeg": (3, 32, 32)}


@pytest.fixture(scope="module")
def benign():
    return {name: pixel_images(name, "test", subset=1000, seed=3)[0] for name in SHAPES}


def nudge(x, seed=0):
    """A slightly perturbed copy: 1% of the pixels moved one level (1/255) up or down."""
    g = torch.Generator().manual_seed(seed)
    moved = torch.rand(x.shape, generator=g) < 0.01
    return (x + moved * (torch.randint(0, 2, x.shape, generator=g) * 2 - 1) / 255).clamp(0, 1)


@pytest.mark.parametrize("dataset", sorted(SHAPES))
@pytest.mark.parametrize("name,params", [("blacklight", {}), ("blacklight", {"hash": "sha256"}), ("piha", {})])
def test_hash_defenses_catch_repeats_and_pass_benign_images(benign, dataset, name, params):
    x = benign[dataset]
    defense = create_defense(name, Flat(SHAPES[dataset]), input_shape=SHAPES[dataset], **params)
    calibration = defense.calibrate(x)
    assert calibration.benign_images == 1000
    assert calibration.false_positive_rate <= 0.01, calibration
    caught = 0
    for i in range(50):
        defense.reset()
        assert not defense.query(x[i]).rejected[0]
        assert defense.query(x[i]).rejected[0], "an exact repeat must be rejected"
        caught += int(defense.query(nudge(x[i], seed=i)).rejected[0])
        assert not defense.query(x[i + 100]).rejected[0], "a different image must be accepted"
        assert defense.stats.queries == 4 and defense.stats.first_hit == 1
    assert caught >= 45, f"only {caught}/50 slightly perturbed repeats were caught"


@pytest.mark.parametrize("threshold", [0.02, 0.05, 0.1])
def test_piha_index_finds_what_a_scan_of_the_history_finds(benign, threshold):
    """The bucket index must flag exactly the queries a linear scan flags, and answer with the same match."""
    g = torch.Generator().manual_seed(1)
    originals = benign["mnist"][:150]
    copies = originals[torch.randint(0, 150, (300,), generator=g)]
    strength = torch.tensor([0.005, 0.02, 0.05, 0.1])[torch.randint(0, 4, (300,), generator=g)].view(-1, 1, 1, 1)
    copies = (copies + strength * torch.randn(copies.shape, generator=g)).clamp(0, 1)
    x = torch.cat([originals, copies])[torch.randperm(450, generator=g)]
    defense = create_defense("piha", Flat((1, 28, 28)), input_shape=(1, 28, 28), threshold=threshold)
    answers = [defense.query(batch) for batch in x.split(37)]  # matches inside a batch too
    rejected = torch.cat([a.rejected for a in answers])
    log_probs = torch.cat([a.log_probs for a in answers])

    codes = defense.perceptual_hash(x).numpy()
    stored: list[int] = []
    for i, code in enumerate(codes):
        nearest = None
        if stored:
            mismatches = (codes[stored] != code).sum(1)
            if mismatches.min() / codes.shape[1] <= threshold + 1e-12:
                nearest = stored[int(mismatches.argmin())]
        assert bool(rejected[i]) == (nearest is not None), f"query {i}"
        if nearest is None:
            stored.append(i)
        else:
            assert torch.equal(log_probs[i], log_probs[nearest]), f"query {i} got another query's cached answer"
    assert 20 <= int(rejected.sum()) <= 300, "the probe should mix hits and misses"


def test_blacklight_fast_hash_is_exact_on_windows():
    """Two windows share a fast hash only when they are identical: the encoding is exact, the scramble a bijection."""
    rng = np.random.default_rng(0)
    windows = np.unique(rng.integers(0, 6, size=(20000, 20)), axis=0)
    codes = np.zeros(len(windows), dtype=np.uint64)
    for j in range(20):
        codes = codes * np.uint64(6) + windows[:, j].astype(np.uint64)
    hashed = _scramble(codes, np.uint64(12345))
    assert len(np.unique(hashed)) == len(windows)
    x = torch.rand(1, 3, 32, 32)
    fingerprint = Blacklight(Flat((3, 32, 32)), input_shape=(3, 32, 32))._digest(x)[0]
    assert len(fingerprint) == 50 and np.all(np.diff(fingerprint.astype(np.float64)) > 0)


def test_blacklight_ignores_windows_that_quantise_as_black():
    defense = Blacklight(Flat((1, 28, 28)), input_shape=(1, 28, 28), salt=False)
    x = torch.zeros(2, 1, 28, 28)
    x[1, 0, 10:12, 10:12] = 0.6
    x[0, 0, 0, :] = 1 / 255  # far below one quantisation step: still black
    content = defense._content_windows(defense.quantize(x))
    assert not content[0].any()
    assert content[1].sum() == 2 * (2 + 10 - 1)  # windows of 10 that touch one of two 2-pixel runs
    assert len(defense._digest(x)[0]) == 0  # a blank image has no fingerprint and can match nothing


def test_stateful_detection_threshold_is_the_benign_percentile(tmp_path):
    from dpplat.audits.defenses.stateful_detection import mean_knn_distance

    reference, _ = pixel_images("mnist", "train", subset=600, seed=1)
    benign, _ = pixel_images("mnist", "test", subset=300, seed=4)
    defense = create_defense("stateful-detection", Flat((1, 28, 28)), input_shape=(1, 28, 28), k=10,
                             reference=reference, encoder_steps=40, cache_dir=tmp_path)
    with torch.no_grad():
        stored = defense._embed_with(defense.encoder, reference[:300])
        held_out = defense._embed_with(defense.encoder, reference[300:])
    expected = np.percentile(mean_knn_distance(held_out, stored, 10).numpy(), 0.1)
    assert defense.threshold == pytest.approx(expected, rel=1e-5)
    assert list(tmp_path.glob("stateful-detection-*.pt")), "the trained encoder is cached"
    cached = create_defense("stateful-detection", Flat((1, 28, 28)), input_shape=(1, 28, 28), k=10,
                            reference=reference, encoder_steps=40, cache_dir=tmp_path)
    assert cached.threshold == defense.threshold
    calibration = defense.calibrate(benign)
    assert calibration.false_positive_rate <= 0.05
    defense.reset()
    defense.query(benign[:20])
    repeats = defense.query(benign[0].expand(12, 1, 28, 28).clone())
    assert repeats.rejected[-1], "many copies of one query put k neighbours at distance 0"



def test_policies(mnist_test):
    x = mnist_test[0][:3]
    for policy, visible in [("reject", True), ("flush", True), ("silent", False), ("ban-count", False)]:
        defense = create_defense("blacklight", Flat((1, 28, 28)), input_shape=(1, 28, 28), policy=policy)
        first = defense.query(x[0])
        again = defense.query(x[0])
        assert bool(again.rejected[0]) is visible
        assert defense.stats.hits == 1 and defense.stats.first_hit == 1
        if policy in ("reject", "flush"):
            assert torch.equal(again.log_probs, first.log_probs), "a rejected query gets the cached answer"
        if policy == "flush":
            assert defense.history_size == 0
            assert not defense.query(x[0]).rejected[0], "the history was flushed"
        if policy == "silent":
            assert defense.history_size == 1, "a hit is not stored"


def test_bad_inputs_are_refused_clearly():
    defense = create_defense("piha", Flat((1, 28, 28)), input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="shape"):
        defense.query(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        defense.query(torch.rand(2, 1, 28, 28) * 255)
    with pytest.raises(ValueError, match="images"):
        defense.query(torch.rand(28, 28))
    with pytest.raises(ValueError, match="unknown defense 'blackligth'"):
        create_defense("blackligth", Flat((1, 28, 28)), input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="policy"):
        create_defense("piha", Flat((1, 28, 28)), input_shape=(1, 28, 28), policy="ban")
    with pytest.raises(ValueError, match="reference"):
        create_defense("stateful-detection", Flat((1, 28, 28)), input_shape=(1, 28, 28))
    assert {"blacklight", "piha", "stateful-detection", "none"} <= set(available_defenses())


def test_a_reseeded_defense_draws_the_same_salt_whatever_it_saw_before():
    """The audit reseeds per image, so an image meets the same salt in any split of the images into jobs."""
    shape = SHAPES["mnist"]
    fresh = create_defense("blacklight", Flat(shape), input_shape=shape, seed=0)
    fresh.reseed([0, 7])
    fresh.reset()
    used = create_defense("blacklight", Flat(shape), input_shape=shape, seed=0)
    for _ in range(3):  # three earlier images
        used.reset()
        used.query(torch.rand(2, *shape))
    assert not np.array_equal(used.salt, fresh.salt), "without a reseed the salt moves on with every reset"
    used.reseed([0, 7])
    used.reset()
    assert np.array_equal(used.salt, fresh.salt) and used.key == fresh.key
    x = torch.rand(1, *shape)
    assert fresh.quantize(x).tolist() == used.quantize(x).tolist()

def test_stateful_detection_encoder_does_not_depend_on_the_thread_count():
    from dpplat.audits.defenses.stateful_detection import train_encoder

    reference, _ = pixel_images("cifar10-jpeg", "train", subset=256, seed=1)
    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            encoder = train_encoder(reference, steps=10, batch_size=64, seed=3)
            weights.append(torch.cat([p.detach().flatten() for p in encoder.parameters()]))
            assert torch.get_num_threads() == threads, "the caller's thread count is restored"
    finally:
        torch.set_num_threads(before)
    assert torch.equal(weights[0], weights[1])
