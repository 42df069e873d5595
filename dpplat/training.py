"""The training loop behind ``dpplat train``: data -> Poisson sampler -> model -> fused DP-SGD -> store.

Kept apart from the CLI so that audits (which train many models) and examples call
the same loop. The store counts every step *before* it is taken, and a resumed run
rebuilds its accountant from that count (:mod:`dpplat.resume`), so a run that
crashes after its last checkpoint resumes with those steps still counted: epsilon
is never under-reported after a crash.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dpplat.holdout import hold_out
from dpplat import data as datasets
from dpplat import models
from dpplat.augment import WeightEMA, make_views
from dpplat.devices import model_device, resolve_device
from dpplat.checkpoints import CheckpointIdentity, checkpoint_path
from dpplat.engine import PrivacyEngine
from dpplat.engine.accounting import check_budget
from dpplat.engine.virtual import micro_batches
from dpplat.fixed_stem import fixed_stem, release_feature_statistics, stem_features, trained_part
from dpplat.interrupts import StopRequest
from dpplat.resume import resumable_config, resume_run
from dpplat.store import RunStore
from dpplat.train_config import TrainConfig  # re-exported: dpplat.training.TrainConfig is public


@dataclass
class TrainResult:
    run_id: int
    accuracy: float | None  # None when the run was interrupted before its final evaluation
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
    info = datasets.dataset_info(config.dataset, config.data_dir)
    return models.create(config.model, num_classes=len(info.classes), in_channels=info.channels, image_size=info.size)


def build_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


def set_learning_rate(optimizer, lr: float) -> None:
    """Set every parameter group's rate (the training loops call it before each step, from the schedule)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


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
    config.validate()
    model, trained, train_set = model_for_training(config, train_set)
    engine = PrivacyEngine(accountant=config.accountant, secure_mode=config.secure_mode)
    release_feature_statistics(model, train_set, config, engine)
    optimizer = build_optimizer(config, trained)
    loader = DataLoader(train_set, batch_size=min(config.batch_size, len(train_set)), shuffle=True)
    generator = torch.Generator(model_device(model)).manual_seed(config.seed + 1)
    common = dict(module=trained, optimizer=optimizer, data_loader=loader, max_grad_norm=config.max_grad_norm,
                  clipping=config.clipping, noise_generator=None if config.secure_mode else generator,
                  allow_large_delta=config.allow_large_delta)
    if config.sigma is None:
        triple = engine.make_private_with_epsilon(
            target_epsilon=config.budget, target_delta=config.delta, epochs=config.epochs, **common)
    else:
        if config.budget is None:  # no budget: delta is still checked against the dataset's size
            check_budget(None, config.delta, len(train_set), allow_large_delta=config.allow_large_delta)
        budget = dict(target_epsilon=config.budget, target_delta=config.delta) if config.budget is not None else {}
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
            set_learning_rate(dp_opt, config.learning_rate(step, steps))
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
    stop: StopRequest | None = None,
) -> TrainResult:
    """Train one model under ``config``, recording the run in ``store``; ``resume`` continues a stored run.

    Before each step the store's count of started steps goes up, so whatever stops the process,
    the steps it took stay charged. A resumed run rebuilds its accountant from that count
    (:mod:`dpplat.resume`). When ``stop`` is set (SIGINT or SIGTERM, see
    :mod:`dpplat.interrupts`) the loop ends between steps with a checkpoint and status
    ``interrupted``. In data-parallel training every rank runs this loop; only the
    ``main_process`` (rank 0) evaluates and writes checkpoints, and the others get a :class:`dpplat.distributed.NullStore`.
    """
    started = time.time()
    if resume is not None:
        config = resumable_config(store, resume)
    torch.manual_seed(config.seed)
    if train_set is None:
        train_set = datasets.load_dataset(config.dataset, "train", data_dir=config.data_dir, subset=config.subset, seed=config.seed)
    if config.validation:  # the held-out share replaces the test set, and is not trained on
        train_set, test_set = hold_out(train_set, config.validation, config.seed)
    else:
        test_set = datasets.load_dataset(config.dataset, "test", data_dir=config.data_dir, subset=config.test_subset,
                                         seed=config.seed)
    model, engine, (dp_model, dp_opt, dp_loader) = make_private_model(config, train_set)

    steps_per_epoch = len(dp_loader)
    total_steps = steps_per_epoch * config.epochs
    device = model_device(model)
    ema = WeightEMA(model, build_model(config).to(device), config.ema_decay) if config.ema_decay else None
    if resume is None:
        run_id = store.create_run(
            dataset=config.dataset, model=config.model, name=config.name,
            config={**dataclasses.asdict(config), "family": models.info(config.model).family},
            noise_multiplier=dp_opt.noise_multiplier, max_grad_norm=dp_model.sensitivity, clipping=config.clipping,
            sample_rate=engine.sample_rate, batch_size=config.batch_size, dataset_size=len(train_set),
            accountant=config.accountant, target_epsilon=config.budget, delta=config.delta,
        )
        if main_process:
            store.add_artifact(kind="checkpoint", path=checkpoint_path(store, run_id), run_id=run_id)
        done_steps = 0
    else:
        run_id = resume
        done_steps = resume_run(store, run_id, config, engine, dp_loader, ema)
    checkpoint = checkpoint_path(store, run_id) if main_process else None
    dp_model.augmentation_multiplicity = config.augmult
    physical_rows = config.max_physical_batch_size * config.augmult if config.max_physical_batch_size else None
    info = datasets.dataset_info(config.dataset, config.data_dir)
    view_rng = torch.Generator().manual_seed(config.seed + 2)
    stem = fixed_stem(model, config)
    if stem is not None and main_process:  # evaluate the head on the test images' features, computed once
        test_set = stem_features(stem, test_set)
    evaluated = lambda: evaluate(trained_part(ema.model if ema is not None else model, stem), test_set) if main_process else None  # noqa: E731

    def save() -> None:
        if not main_process:
            return
        identity = CheckpointIdentity(store.store_id, run_id, step, engine.steps_taken)
        engine.save_checkpoint(checkpoint, extra={"step": step, "identity": identity.as_dict(),
                                                  **({"ema": ema.model.state_dict()} if ema is not None else {})})
        store.record_checkpoint(run_id, step)

    log_every = config.log_every or max(1, total_steps // 50)
    bar = _progress(total_steps, quiet or not main_process)
    if bar is not None:
        bar.update(done_steps)
    status, message = "finished", None
    step = done_steps
    with store.heartbeat("runs", run_id):
        try:
            while step < total_steps and status == "finished":
                for x, y in dp_loader:
                    if step >= total_steps:
                        break
                    if stop is not None and stop.is_set():
                        status, message = "interrupted", f"stopped by {stop.reason} before step {step + 1}"
                        break
                    if engine.steps_remaining is not None and engine.steps_remaining <= 0:
                        status = "budget_exhausted"
                        message = f"stopped before step {step + 1}: it would exceed epsilon = {config.epsilon}"
                        break
                    store.charge_step(run_id, engine.steps_taken + 1, step + 1)  # counted before it is taken
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    dp_opt.zero_grad()
                    set_learning_rate(dp_opt, config.learning_rate(step, total_steps))
                    if config.augmult > 1:  # K views per example, averaged before clipping: same privacy cost
                        x = make_views(x, config.augmult, pad=info.size // 8, flip=info.flip,
                                       generator=view_rng)
                        y = y.repeat_interleave(config.augmult)
                    loss_sum, correct = 0.0, 0  # tensors after the first micro-batch: no device sync per step
                    for xb, yb in micro_batches(x, y, max_rows=physical_rows):  # noise comes once, in step()
                        out = dp_model(xb)
                        loss = F.cross_entropy(out, yb)
                        loss.backward()
                        loss_sum = loss_sum + loss.detach() * len(yb)
                        correct = correct + (out.argmax(1) == yb).sum()
                    loss = loss_sum / max(len(y), 1)
                    dp_opt.step()
                    if ema is not None:
                        ema.update(model)
                    step += 1
                    if step % log_every == 0 or step == total_steps:
                        eps = engine.get_epsilon(config.delta)
                        batch_acc = float(correct) / len(y) if len(y) else None
                        store.log_step(run_id, step, epsilon=eps, loss=loss.item(), accuracy=batch_acc)
                        if bar is not None:
                            bar.set_postfix(eps=f"{eps:.3f}", loss=f"{loss.item():.3f}")
                    if bar is not None:
                        bar.update(1)
                    if step % steps_per_epoch == 0:
                        store.log_step(run_id, step, epsilon=engine.get_epsilon(config.delta), loss=loss.item(),
                                       test_accuracy=evaluated())
                        save()
        except BaseException as err:
            store.update_run(run_id, status="interrupted", message=f"{type(err).__name__}: {err}",
                             epsilon=engine.get_epsilon(config.delta))
            err.dpplat_run_id = run_id  # the CLI names the run in its resume hint
            raise
        finally:
            if bar is not None:
                bar.close()
        save()
        epsilon = engine.get_epsilon(config.delta)
        statement = str(engine.privacy_statement(config.delta))
        if status == "interrupted":
            store.update_run(run_id, status=status, message=message, epsilon=epsilon, steps=step, statement=statement)
            return TrainResult(run_id, None, epsilon, config.delta, step, status, statement, time.time() - started,
                               store.path, (ema.model if ema is not None else model).cpu())
        accuracy = evaluated()
        store.log_step(run_id, step, epsilon=epsilon, test_accuracy=accuracy)
        store.update_run(run_id, status=status, message=message, epsilon=epsilon, steps=step, accuracy=accuracy,
                         statement=statement, finished_at=time.time())
    return TrainResult(run_id, accuracy, epsilon, config.delta, step, status, statement, time.time() - started,
                       store.path, (ema.model if ema is not None else model).cpu())
