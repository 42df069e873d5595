"""``dpplat train``'s flags and the training configuration they describe, in one place: the command line and the
multi-host entry point (``torchrun ... -m dpplat.distributed train``) both parse them here, and the configuration is
validated when it is built (:class:`dpplat.training.TrainConfig`)."""

from __future__ import annotations

import argparse

from dpplat.cli_help import DATASET_HELP, show_defaults


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """``dpplat train``'s flags, each with its help and default."""
    from dpplat.engine.accounting import ACCOUNTANTS
    from dpplat.train_config import CLIPPINGS, LR_SCHEDULES, OPTIMIZERS

    p.add_argument("--config", help="a shipped recipe's name (dpplat recipes lists them) or a TOML recipe file; flags "
                                    "given here override it")
    p.add_argument("--dataset", help=DATASET_HELP)
    p.add_argument("--model", help="a zoo name (dpplat.models.available()) or your own package.module:function, "
                                   "called with num_classes, in_channels and image_size")
    p.add_argument("--group", help="the symmetry group (C4, D4, C8, D8) the model must be equivariant to; a model of "
                                   "another group is refused")
    p.add_argument("--epsilon", type=float, help="target epsilon: the budget the run never exceeds "
                                                 "('inf' with --sigma: no budget)")
    p.add_argument("--delta", type=float, help="target delta; must be below 1/N")
    p.add_argument("--allow-large-delta", action="store_true", default=None,
                   help="accept delta >= 1/N (a guarantee that allows publishing a whole example) with a warning")
    p.add_argument("--sigma", type=float, help="noise multiplier instead of calibrating it from --epsilon "
                                               "(0 trains WITHOUT privacy and needs --epsilon inf)")
    p.add_argument("--epochs", type=int, help="passes over the training data (epochs x N/B Poisson steps)")
    p.add_argument("--batch-size", type=int, help="expected batch size (Poisson sampling rate = B / N)")
    p.add_argument("--max-grad-norm", type=float, help="total clipping bound C")
    p.add_argument("--clipping", choices=CLIPPINGS, help="clip each layer's gradient, or the whole one")
    p.add_argument("--accountant", choices=ACCOUNTANTS, help="Opacus's privacy accountant")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="the optimizer that applies the noisy gradient")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="constant, or cosine: the learning rate decays from --lr to 0 over the run's steps")
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--seed", type=int, help="seeds the model, the Poisson sampler and the noise")
    p.add_argument("--subset", type=int, help="train on a deterministic random subset of this many examples")
    p.add_argument("--test-subset", type=int, help="evaluate on a subset of the test split")
    p.add_argument("--validation", type=float,
                   help="hold out this share of the training set (seeded) and report accuracy on it instead of the "
                        "test set: choose settings on it, and touch the test set once")
    p.add_argument("--augmult", type=int, help="augmentation multiplicity: K views per example, averaged before clipping")
    p.add_argument("--max-physical-batch-size", type=int,
                   help="examples per backward pass: a larger Poisson batch is split into micro-batches whose "
                        "clipped sums add up before the one noise draw (virtual batches; accounting unchanged)")
    p.add_argument("--ema-decay", type=float, help="evaluate an exponential moving average of the weights")
    p.add_argument("--data-norm-noise", type=float,
                   help="noise multiplier of the private release of *-datanorm and *-centered models' feature "
                        "statistics (default 8)")
    p.add_argument("--data-norm-clip", type=float,
                   help="L2 bound on one example's channel means (and mean squares) in the *-datanorm release "
                        "(default 3; *-centered models use the bound their GroupNorm guarantees)")
    p.add_argument("--device", help="where to train: cpu (default), cuda, cuda:N, or auto (a GPU when there is one)")
    p.add_argument("--secure-mode", action="store_true", default=None, help="noise from the OS CSPRNG")
    p.add_argument("--name", help="a label for the run")
    p.add_argument("--data-dir", help="folder with the project's dataset copies (default: DPPLAT_DATA, or a "
                                      "checkout's ../shared/data); without one, built-in datasets are downloaded")
    p.add_argument("--store", help="SQLite run store (default: DPPLAT_STORE or ./dpplat.db)")
    p.add_argument("--resume", type=int, metavar="RUN_ID", help="continue a stored run from its checkpoint")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (torch.distributed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; print only the result line")
    from dpplat.training import TrainConfig

    show_defaults(p, TrainConfig)


def train_config_from_args(args: argparse.Namespace):
    """The TrainConfig that ``dpplat train``'s flags (and --config file) describe."""
    from dpplat.training import TrainConfig

    overrides = {k: getattr(args, k) for k in (
        "dataset", "model", "group", "epsilon", "delta", "sigma", "epochs", "batch_size", "max_grad_norm", "clipping",
        "accountant", "optimizer", "lr", "lr_schedule", "momentum", "seed", "subset", "test_subset", "validation",
        "secure_mode", "name", "data_dir", "augmult", "max_physical_batch_size", "ema_decay", "data_norm_noise",
        "data_norm_clip", "device", "allow_large_delta",
    )}
    if args.config:
        return TrainConfig.from_toml(args.config, **overrides)
    return TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
