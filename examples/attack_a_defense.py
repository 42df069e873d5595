"""Put a trained model behind Blacklight and attack it, standard and OARS, from the Python API.

Trains a small MNIST CNN (or takes yours), wraps it in the Blacklight stateful
defense, and runs one black-box attack on a few correctly classified test images in
both forms: the standard attack stops at its first rejected query, the OARS form
learns how far its queries must move and resamples what gets rejected.

    python examples/attack_a_defense.py --attack nes --images 10
"""

import argparse

import torch

from dpplat.audits.attacks import create_attack
from dpplat.audits.defenses import create_defense
from dpplat.audits.target import pixel_images, train_target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--attack", default="nes", choices=["nes", "square", "hsja", "qeba", "surfree", "boundary"])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--budget", type=int, default=100_000, help="queries per image, rejected ones included")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workdir", default="defense-example")
    args = parser.parse_args(argv)

    model = train_target("mnist", epochs=args.epochs, cache_dir=args.workdir)  # a pixel-space classifier
    x, y = pixel_images("mnist", "test", subset=500, seed=1)
    predicted = model(x).argmax(1)
    defense = create_defense("blacklight", model, input_shape=(1, 28, 28))
    print(f"Blacklight flags {defense.calibrate(x).false_positive_rate:.1%} of 500 distinct benign test images")

    attack = create_attack(args.attack, eps=0.3 if args.attack in ("nes", "square") else 0.1)
    correct = torch.nonzero(predicted == y).flatten().tolist()
    outcomes = {"standard": [], "oars": []}
    for i in correct[:args.images]:
        label = int(y[i])
        target = (label + 1) % 10
        goal = predicted == target if attack.targeted else predicted != label
        start = x[torch.nonzero(goal).flatten()[0]]  # decision-based attacks start from an adversarial image
        for mode in outcomes:
            outcomes[mode].append(attack.attack(defense, x[i], label, target=target, start=start, mode=mode,
                                                budget=args.budget, image_index=i))
    for mode, results in outcomes.items():
        wins = [r for r in results if r.success]
        queries = sum(r.queries for r in wins) / max(len(wins), 1)
        print(f"{args.attack} {mode:<9} success {len(wins)}/{len(results)}   mean queries (successes) {queries:,.0f}   "
              f"mean rejections {sum(r.rejections for r in results) / len(results):,.0f}")
    return outcomes


if __name__ == "__main__":
    main()
