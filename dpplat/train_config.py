"""The settings of one training run (:class:`TrainConfig`), checked whenever they are built.

``dpplat train``'s flags, a ``models/*.toml`` recipe and the Python API all build this one object, so every
door gets the same checks and the same one-line messages.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from dpplat import data as datasets
from dpplat import models
from dpplat.config_checks import check_choice, check_range, check_types
from dpplat.devices import resolve_device
from dpplat.engine.accounting import ACCOUNTANTS, check_budget, check_noise_multiplier
from dpplat.shipped import resolve
from dpplat.tomlfile import read_toml


LR_SCHEDULES = ("constant", "cosine")
CLIPPINGS = ("per_layer", "flat")
OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainConfig:
    """Everything a training run needs; a ``models/*.toml`` recipe holds the same keys.

    ``epsilon`` is the budget: with ``sigma`` unset, sigma is calibrated so that
    ``epochs`` epochs spend exactly that; with ``sigma`` set, training stops before
    the step that would exceed ``epsilon`` (if given; ``inf`` means no budget).
    ``sigma = 0`` adds no noise: that run is not private and needs ``epsilon = inf``.
    Every value is checked when the config is built (:meth:`validate`).
    """

    dataset: str = "mnist"
    model: str = "cnn"
    group: str | None = None  # the symmetry group the recipe expects the model to be equivariant to (a check)
    epsilon: float | None = 2.0
    delta: float = 1e-5
    sigma: float | None = None
    epochs: int = 1
    batch_size: int = 512
    max_grad_norm: float = 0.1
    clipping: str = "per_layer"
    accountant: str = "prv"
    optimizer: str = "sgd"
    lr: float = 4.0
    lr_schedule: str = "constant"  # constant, or cosine: decays from lr to 0 over the run's steps
    momentum: float = 0.9
    seed: int = 0
    subset: int | None = None
    test_subset: int | None = None
    validation: float = 0.0  # share of the training set held out and evaluated on instead of the test set
    secure_mode: bool = False
    name: str | None = None
    data_dir: str | None = None
    log_every: int = 0
    augmult: int = 1
    max_physical_batch_size: int | None = None  # examples per backward; a larger Poisson batch is split (virtual)
    ema_decay: float | None = None
    data_norm_noise: float = 8.0  # Tramer & Boneh's bn_noise_multiplier; *-datanorm and *-centered models release statistics
    data_norm_clip: float = 3.0
    device: str = "cpu"  # where the model, batches and noise live: cpu, cuda, cuda:N or auto
    allow_large_delta: bool = False  # let delta >= 1/N through (with a warning) instead of refusing it
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> "TrainConfig":
        """Read a recipe (a path, or a shipped recipe's name); top-level keys or a ``[train]`` table map onto the
        fields, the rest goes to ``extra``."""
        raw = read_toml(resolve("recipe", path), "recipe")
        table = dict(raw.get("train", raw))
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k.replace("-", "_"): v for k, v in table.items() if k.replace("-", "_") in names}
        extra = {k: v for k, v in raw.items() if k.replace("-", "_") not in names and k != "train"}
        known.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**known, extra={**extra, **known.pop("extra", {})})

    def __post_init__(self) -> None:
        self.dataset = datasets.canonical_dataset(self.dataset)
        self.validate()

    @staticmethod
    def flag(name: str) -> str:
        """How a message names a field: the recipe key and the ``dpplat train`` flag."""
        return f"{name} (--{name.replace('_', '-')})"

    @property
    def budget(self) -> float | None:
        """The epsilon the run may not exceed; None when there is none (``epsilon`` unset or infinite)."""
        return self.epsilon if self.epsilon is not None and math.isfinite(self.epsilon) else None

    def validate(self) -> None:
        """Types, ranges and the combinations that make sense; run whenever a config is built."""
        check_types(self, label=self.flag, allow_infinite=("epsilon",))
        flag = self.flag
        if self.sigma is not None:
            check_noise_multiplier(self.sigma)
        if self.sigma is None and self.budget is None:
            raise ValueError("give a budget (--epsilon) or a noise multiplier (--sigma); an infinite --epsilon needs "
                             "--sigma (--sigma 0 --epsilon inf trains without privacy).")
        if self.sigma == 0 and self.budget is not None:
            raise ValueError(f"--sigma 0 adds no noise, so no epsilon budget (--epsilon {self.epsilon:g}) can hold. "
                             "Give --sigma > 0 or only --epsilon; to train without privacy on purpose, pass "
                             "--sigma 0 --epsilon inf.")
        if self.epsilon is not None and not self.epsilon > 0:
            raise ValueError(f"{flag('epsilon')} must be > 0 (or inf with --sigma for no budget), got {self.epsilon}.")
        check_budget(self.budget, self.delta)
        for name in ("epochs", "batch_size", "augmult", "subset", "test_subset", "max_physical_batch_size"):
            check_range(flag(name), getattr(self, name), low=1)
        for name in ("max_grad_norm", "lr", "data_norm_noise", "data_norm_clip"):
            check_range(flag(name), getattr(self, name), low=0, low_open=True)
        check_range(flag("momentum"), self.momentum, low=0, high=1, high_open=True)
        check_range(flag("validation"), self.validation, low=0, high=1, high_open=True)
        check_range(flag("seed"), self.seed, low=0)
        check_range(flag("log_every"), self.log_every, low=0)
        check_range(flag("ema_decay"), self.ema_decay, low=0, high=1, low_open=True, high_open=True)
        check_choice(flag("clipping"), self.clipping, CLIPPINGS)
        check_choice(flag("accountant"), self.accountant, ACCOUNTANTS)
        check_choice(flag("optimizer"), self.optimizer, OPTIMIZERS)
        check_choice(flag("lr_schedule"), self.lr_schedule, LR_SCHEDULES)
        datasets.check_dataset_name(self.dataset)
        model = models.info(self.model)  # an unknown model is named here, with the zoo's names
        if self.group is not None and self.group != model.group:
            has = f"is equivariant to {model.group}" if model.group else "is not group-equivariant"
            raise ValueError(f"{flag('group')} is {self.group!r}, but model {self.model!r} {has}; drop the group "
                             "or choose a model of that group (dpplat.models.available() lists each model's group).")
        resolve_device(self.device)

    def learning_rate(self, step: int, total_steps: int) -> float:
        """The learning rate of step ``step`` (counted from 0) of a run of ``total_steps``.

        A function of the step alone, so a resumed run continues the schedule where it stopped.
        """
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
        return self.lr

    @classmethod
    def from_stored(cls, stored: dict) -> "TrainConfig":
        """The config a run store recorded (it also holds keys that are not fields, such as the model family)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in names})
