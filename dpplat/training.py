"""The training loop behind ``dpplat train``: data -> Poisson sampler -> model -> fused DP-SGD -> store.

Kept apart from the CLI so that audits (which train many models) and examples call
the same loop. The store is told about every step *before* it is taken, so a run
that crashes after its last checkpoint resumes with those steps still counted:
epsilon is never under-reported after a crash.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dpplat import data as datasets
from dpplat import models
from dpplat.augment import WeightEMA, make_views
from dpplat.devices import model_device, resolve_device
from dpplat.engine import PrivacyEngine
from dpplat.engine.accounting import check_budget
from dpplat.fixed_stem import fixed_stem, release_feature_statistics, stem_features, trained_part
from dpplat.store import RunStore
from dpplat.tomlfile import read_toml


@dataclass
class TrainConfig:
    """Everything a training run needs; a ``models/*.toml`` recipe holds the same keys.

    ``epsilon`` is the budget: with ``sigma`` unset, sigma is calibrated so that
    ``epochs`` epochs spend exactly that; with ``sigma`` set, training stops before
    the step that would exceed ``epsilon`` (if given).
    """

    dataset: str = "mnist"
    model: str = "cnn"
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
    momentum: float = 0.9
    seed: int = 0
    subset: int | None = None
    test_subset: int | None = None
    secure_mode: bool = False
    name: str | None = None
    data_dir: str | None = None
    log_every: int = 0
    augmult: int = 1
    ema_decay: float | None = None
    data_norm_noise: float = 8.0  # Tramer & Boneh's bn_noise_multiplier; *-datanorm and *-centered models release statistics
    data_norm_clip: float = 3.0
    device: str = "cpu"  # where the model, batches and noise live: cpu, cuda, cuda:N or auto
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> "TrainConfig":
        """Read a recipe; top-level keys or a ``[train]`` table map onto the fields, the rest goes to ``extra``."""
        raw = read_toml(path, "config file", "the shipped recipes are in models/")
        table = dict(raw.get("train", raw))
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k.replace("-", "_"): v for k, v in table.items() if k.replace("-", "_") in names}
        extra = {k: v for k, v in raw.items() if k.replace("-", "_") not in names and k != "train"}
        known.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**known, extra={**extra, **known.pop("extra", {})})

    def validate(self) -> None:
        if self.epsilon is None and self.sigma is None:
            raise ValueError("give a budget (--epsilon) or a noise multiplier (--sigma).")
        if self.sigma is not None and self.sigma < 0:
            raise ValueError(f"--sigma must be >= 0, got {self.sigma}.")
        check_budget(self.epsilon, self.delta)
        if self.epochs <= 0:
            raise ValueError(f"--epochs must be positive, got {self.epochs}.")
        if self.batch_size <= 0:
            raise ValueError(f"--batch-size must be positive, got {self.batch_size}.")
        if self.augmult < 1:
            raise ValueError(f"--augmult must be at least 1, got {self.augmult}.")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be in (0, 1), got {self.ema_decay}.")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"--optimizer must be 'sgd' or 'adam', got {self.optimizer!r}.")
        resolve_device(self.device)
        if not self.data_norm_noise > 0 or not self.data_norm_clip > 0:
            raise ValueError(f"--data-norm-noise and --data-norm-clip must be > 0, got {self.data_norm_noise} and "
                             f"{self.data_norm_clip}.")


@dataclass
class TrainResult:
    run_id: int
    accuracy: float
    epsilon: float
    delta: float
    steps: int
    status: str
    statement: str
    seconds: float
    store_path: Path
    model: torch.nn.Module  # what ``accuracy`` measured (the EMA copy with ``ema_decay``, as load_run_model), on the CPU


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, batch_size: int = 1000) -> float:
    model.eval()
    device = model_device(model)
    correct = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    model.train()
    return correct / max(1, len(dataset))


def _progress(total: int, quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)


def build_model(config: TrainConfig) -> torch.nn.Module:
    info = datasets.DATASETS[config.dataset]
    return models.create(config.model, num_classes=len(info.classes), in_channels=info.channels, image_size=info.size)


def build_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


def model_for_training(config: TrainConfig, train_set) -> tuple[torch.nn.Module, torch.nn.Module, object]:
    """The whole model on ``config.device``, the part the optimizer trains, and what that part trains
    on (a cached stem's features, computed on the device and kept on the CPU, in place of the images
    when the model has one)."""
    model = build_model(config).to(resolve_device(config.device))
    stem = fixed_stem(model, config)
    if stem is not None:
        train_set = stem_features(stem, train_set)
    return model, trained_part(model, stem), train_set


def make_private_model(config: TrainConfig, train_set) -> tuple[torch.nn.Module, PrivacyEngine, tuple]:
    """The zoo model, its optimizer and a Poisson loader over ``train_set``, made private as ``config`` says.

    A model with a fixed stem trains its head on the stem's features, computed once here; the
    returned model is the whole model, whose head the private optimizer updates in place. A
    ``DataNorm`` or ``DataCentering`` head gets its statistics here, and the engine composes their release.
    """
    config.validate()  # the engine warns when delta > 1/N
    model, trained, train_set = model_for_training(config, train_set)
    engine = PrivacyEngine(accountant=config.accountant, secure_mode=config.secure_mode)
    release_feature_statistics(model, train_set, config, engine)
    optimizer = build_optimizer(config, trained)
    loader = DataLoader(train_set, batch_size=min(config.batch_size, len(train_set)), shuffle=True)
    generator = torch.Generator(model_device(model)).manual_seed(config.seed + 1)
    common = dict(module=trained, optimizer=optimizer, data_loader=loader, max_grad_norm=config.max_grad_norm,
                  clipping=config.clipping, noise_generator=None if config.secure_mode else generator)
    if config.sigma is None:
        triple = engine.make_private_with_epsilon(
            target_epsilon=config.epsilon, target_delta=config.delta, epochs=config.epochs, **common)
    else:
        budget = dict(target_epsilon=config.epsilon, target_delta=config.delta) if config.epsilon else {}
        triple = engine.make_private(noise_multiplier=config.sigma, **common, **budget)
    return model, engine, triple


def fit(config: TrainConfig, train_set, *, private: bool = True) -> torch.nn.Module:
    """Train a model on ``train_set`` with no store, checkpoints or progress bar (audits train many).

    ``private=False`` trains the same model and optimizer without clipping or noise: the
    epsilon = infinity reference that an audit compares against. The model comes back on the
    CPU wherever it trained, as audits score it on CPU tensors.
    """
    torch.manual_seed(config.seed)
    if private:
        model, engine, (dp_model, dp_opt, loader) = make_private_model(config, train_set)
        steps = len(loader) * config.epochs
    else:
        model, dp_model, train_set = model_for_training(config, train_set)
        release_feature_statistics(model, train_set, config, PrivacyEngine(accountant=config.accountant))  # same model
        dp_opt = build_optimizer(config, dp_model)
        loader = DataLoader(train_set, batch_size=min(config.batch_size, len(train_set)), shuffle=True,
                            generator=torch.Generator().manual_seed(config.seed))
        steps = len(loader) * config.epochs
    device = model_device(model)
    step = 0
    while step < steps:
        for x, y in loader:
            if step >= steps or (private and engine.steps_remaining is not None and engine.steps_remaining <= 0):
                return model.cpu()
            dp_opt.zero_grad()
            F.cross_entropy(dp_model(x.to(device)), y.to(device)).backward()
            dp_opt.step()
            step += 1
    return model.cpu()


def train(
    config: TrainConfig,
    *,
    store: RunStore,
    quiet: bool = False,
    resume: int | None = None,
    train_set=None,
    main_process: bool = True,
) -> TrainResult:
    """Train one model under ``config``, recording the run in ``store``; ``resume`` continues a stored run.

    In data-parallel training every rank runs this loop; only the ``main_process`` (rank 0)
    evaluates and writes checkpoints, and the others get a :class:`NullStore`.
    """
    started = time.time()
    if resume is not None:
        stored = store.get_run(resume)
        config = TrainConfig(**{k: v for k, v in stored.config.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    torch.manual_seed(config.seed)
    if train_set is None:
        train_set = datasets.load_dataset(config.dataset, "train", data_dir=config.data_dir, subset=config.subset, seed=config.seed)
    test_set = datasets.load_dataset(config.dataset, "test", data_dir=config.data_dir, subset=config.test_subset, seed=config.seed)
    model, engine, (dp_model, dp_opt, dp_loader) = make_private_model(config, train_set)

    steps_per_epoch = len(dp_loader)
    total_steps = steps_per_epoch * config.epochs
    if resume is None:
        run_id = store.create_run(
            dataset=config.dataset, model=config.model, name=config.name,
            config={**dataclasses.asdict(config), "family": models.info(config.model).family},
            noise_multiplier=dp_opt.noise_multiplier, max_grad_norm=dp_model.sensitivity, clipping=config.clipping,
            sample_rate=engine.sample_rate, batch_size=config.batch_size, dataset_size=len(train_set),
            accountant=config.accountant, target_epsilon=config.epsilon, delta=config.delta,
        )
        done_steps = 0
    else:
        run_id = resume
        done_steps = _resume(engine, store, run_id)
    checkpoint = store.path.resolve().parent / "dpplat-work" / "runs" / f"run-{run_id}" / "checkpoint.pt"
    if resume is None:
        store.add_artifact(kind="checkpoint", path=checkpoint, run_id=run_id)
    device = model_device(model)
    ema = WeightEMA(model, build_model(config).to(device), config.ema_decay) if config.ema_decay else None
    if ema is not None and resume is not None:
        ema.model.load_state_dict(_checkpoint_extra(store, run_id)["ema"])
    dp_model.augmentation_multiplicity = config.augmult
    info = datasets.DATASETS[config.dataset]
    view_rng = torch.Generator().manual_seed(config.seed + 2)
    stem = fixed_stem(model, config)
    if stem is not None and main_process:  # evaluate the head on the test images' features, computed once
        test_set = stem_features(stem, test_set)
    evaluated = lambda: evaluate(trained_part(ema.model if ema is not None else model, stem), test_set) if main_process else None  # noqa: E731
    saved = lambda: {"step": step, **({"ema": ema.model.state_dict()} if ema is not None else {})}  # noqa: E731
    log_every = config.log_every or max(1, total_steps // 50)
    bar = _progress(total_steps, quiet or not main_process)
    if bar is not None:
        bar.update(done_steps)
    status, message = "finished", None
    step = done_steps
    try:
        while step < total_steps and status == "finished":
            for x, y in dp_loader:
                if step >= total_steps:
                    break
                if engine.steps_remaining is not None and engine.steps_remaining <= 0:
                    status = "budget_exhausted"
                    message = f"stopped before step {step + 1}: it would exceed epsilon = {config.epsilon}"
                    break
                store.update_run(run_id, steps=step + 1)  # counted before it is taken
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                dp_opt.zero_grad()
                if config.augmult > 1:  # K views per example, averaged before clipping: same privacy cost
                    x = make_views(x, config.augmult, pad=info.size // 8, flip=config.dataset == "cifar10",
                                   generator=view_rng)
                    y = y.repeat_interleave(config.augmult)
                out = dp_model(x)
                loss = F.cross_entropy(out, y)
                loss.backward()
                dp_opt.step()
                if ema is not None:
                    ema.update(model)
                step += 1
                if step % log_every == 0 or step == total_steps:
                    eps = engine.get_epsilon(config.delta)
                    batch_acc = (out.argmax(1) == y).float().mean().item() if len(y) else None
                    store.log_step(run_id, step, epsilon=eps, loss=loss.item(), accuracy=batch_acc)
                    if bar is not None:
                        bar.set_postfix(eps=f"{eps:.3f}", loss=f"{loss.item():.3f}")
                if bar is not None:
                    bar.update(1)
                if step % steps_per_epoch == 0:
                    store.log_step(run_id, step, epsilon=engine.get_epsilon(config.delta), loss=loss.item(),
                                   test_accuracy=evaluated())
                    if main_process:
                        engine.save_checkpoint(checkpoint, extra=saved())
    except BaseException as err:
        store.update_run(run_id, status="interrupted", message=f"{type(err).__name__}: {err}", epsilon=engine.get_epsilon(config.delta))
        raise
    finally:
        if bar is not None:
            bar.close()
    if main_process:
        engine.save_checkpoint(checkpoint, extra=saved())
    accuracy = evaluated()
    epsilon = engine.get_epsilon(config.delta)
    statement = str(engine.privacy_statement(config.delta))
    store.log_step(run_id, step, epsilon=epsilon, test_accuracy=accuracy)
    store.update_run(run_id, status=status, message=message, epsilon=epsilon, steps=step, accuracy=accuracy,
                     statement=statement, finished_at=time.time())
    return TrainResult(run_id, accuracy, epsilon, config.delta, step, status, statement, time.time() - started,
                       store.path, (ema.model if ema is not None else model).cpu())


class NullStore:
    """The store of a data-parallel rank other than 0: the run is stored once, by rank 0."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def create_run(self, **_) -> int:
        return 0

    def update_run(self, *_, **__) -> None:
        pass

    def log_step(self, *_, **__) -> None:
        pass

    def add_artifact(self, **_) -> int:
        return 0


def _checkpoint_extra(store: RunStore, run_id: int) -> dict:
    path = store.artifacts(run_id, kind="checkpoint")[-1]["path"]
    return torch.load(path, map_location="cpu", weights_only=False)["extra"]


def _resume(engine: PrivacyEngine, store: RunStore, run_id: int) -> int:
    """Load the run's checkpoint; steps the store saw begin after it are charged to the accountant too."""
    paths = store.artifacts(run_id, kind="checkpoint")
    if not paths or not Path(paths[-1]["path"]).is_file():
        raise FileNotFoundError(f"run {run_id} has no checkpoint to resume from; start a new run instead.")
    extra = engine.load_checkpoint(paths[-1]["path"])
    checkpoint_steps = int(extra.get("step", engine.steps_taken))
    started_steps = int(store.get_run(run_id)["steps"] or 0)
    lost = max(0, started_steps - checkpoint_steps)
    if lost:
        # Steps that ran after the checkpoint released noisy updates we no longer have: count them.
        engine.charge_steps(lost)
    store.update_run(run_id, status="running", message=f"resumed at step {checkpoint_steps} ({lost} lost steps charged)")
    return checkpoint_steps
