"""Audit what a training recipe leaks, from the Python API: claimed vs empirical epsilon.

Trains several small models on MNIST with mislabelled canaries (each included with
probability 1/2), attacks them with a loss threshold, and turns the attack's errors
into a Bayesian interval for epsilon, with Clopper–Pearson and the one-run bound beside it.

    python examples/audit_a_model.py --epsilon 8 --models 16
"""

import argparse
import math

from dpplat.audits.mia import MIAConfig, format_report, run_mia
from dpplat.training import TrainConfig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epsilon", type=float, default=8.0, help="claimed epsilon (inf: no DP, the reference)")
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--challenges", type=int, default=256)
    parser.add_argument("--base-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workdir", default="audit-example")
    args = parser.parse_args(argv)

    recipe = TrainConfig(model="mlp", epochs=args.epochs, batch_size=128, momentum=0.9, max_grad_norm=1.0,
                         lr=0.1 if math.isinf(args.epsilon) else 0.5, accountant="rdp")
    config = MIAConfig(dataset="mnist", epsilon=args.epsilon, delta=1e-5, models=args.models,
                       challenges=args.challenges, base_size=args.base_size, train=recipe)
    results = run_mia(config, args.workdir)
    print(format_report(results))
    claimed = "inf" if results["claimed_epsilon"] is None else f"{results['claimed_epsilon']:g}"
    print(f"claimed epsilon {claimed} vs empirical lower bound {results['bayes']['lower_bound']:.3f}")
    return results


if __name__ == "__main__":
    main()
