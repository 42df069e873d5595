"""The front door: ``PrivacyEngine``, shaped like Opacus's so users switch in minutes."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from dpplat.engine import accounting
from dpplat.engine.fused import DPModule
from dpplat.engine.optimizer import DPOptimizer
from dpplat.engine.sampler import PoissonDataLoader
from dpplat.engine.statement import PrivacyStatement


def _process_group() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PrivacyEngine:
    """Makes a (module, optimizer, data loader) triple differentially private and keeps its accountant.

    Parameters
    ----------
    accountant: ``"prv"`` (default, tightest) or ``"rdp"``, Opacus's accountants.
    secure_mode: draw noise and Poisson masks from the OS CSPRNG instead of torch's
        Mersenne Twister (see :mod:`dpplat.engine.noise` for why that is sound).
    """

    def __init__(self, accountant: str = "prv", secure_mode: bool = False) -> None:
        self.accountant_name = accountant
        self.accountant = accounting.make_accountant(accountant)
        self.secure_mode = secure_mode
        self.module: DPModule | None = None
        self.optimizer: DPOptimizer | None = None
        self.data_loader: DataLoader | None = None
        self.target_epsilon: float | None = None
        self.target_delta: float | None = None
        self.releases: list[tuple[float, float, int]] = []

    # -- making things private -------------------------------------------------------------
    def make_private(
        self,
        *,
        module: nn.Module,
        optimizer: Optimizer,
        data_loader: DataLoader,
        noise_multiplier: float,
        max_grad_norm: float | list[float],
        clipping: str = "per_layer",
        poisson_sampling: bool = True,
        loss_reduction: str = "mean",
        target_epsilon: float | None = None,
        target_delta: float | None = None,
        noise_generator: torch.Generator | None = None,
        distributed: bool | None = None,
        allow_large_delta: bool = False,
    ) -> tuple[DPModule, DPOptimizer, DataLoader]:
        """Wrap the three; with ``target_epsilon`` the optimizer refuses steps beyond that budget.

        ``distributed`` (default: whether a torch.distributed group of several processes is
        initialised) makes the triple data parallel: every rank passes the same model and the
        whole dataset; Poisson sampling and noise are global, so accounting is unchanged.

        ``noise_multiplier=0`` clips but adds no noise: the training is not private, epsilon is
        infinite, a :class:`PrivacyWarning` says so and the privacy statement states it. It takes
        no budget. A budget that not even one step fits is refused here, before training.
        ``target_delta >= 1/N`` is refused unless ``allow_large_delta=True``.
        """
        if self.module is not None:
            raise RuntimeError("this PrivacyEngine already manages a model; create one engine per training run.")
        noise_multiplier = accounting.check_noise_multiplier(noise_multiplier)
        dataset_size = len(data_loader.dataset)
        if target_epsilon is not None or target_delta is not None:
            if target_epsilon is None or target_delta is None:
                raise ValueError("a budget needs both target_epsilon and target_delta.")
            accounting.check_budget(target_epsilon, target_delta, dataset_size, allow_large_delta=allow_large_delta)
            if noise_multiplier == 0:
                raise ValueError("a noise multiplier of 0 adds no noise, so no epsilon budget can hold: give a "
                                 "noise multiplier > 0, or drop the budget to train without privacy on purpose.")
        elif noise_multiplier == 0:
            warnings.warn("noise multiplier 0: this training is NOT differentially private (epsilon is infinite); "
                          "gradients are clipped but no noise is added.", accounting.PrivacyWarning, stacklevel=2)
        dp_module = module if isinstance(module, DPModule) else DPModule(
            module, max_grad_norm=max_grad_norm, clipping=clipping, loss_reduction=loss_reduction
        )
        rank, world_size = _process_group() if distributed is not False else (0, 1)
        distributed = world_size > 1
        if distributed and not poisson_sampling:
            raise ValueError("distributed training needs poisson_sampling=True (the sample is drawn once, globally).")
        # q = 1 / len(loader), as Opacus does; a PoissonDataLoader keeps its own
        sample_rate = data_loader.sample_rate if isinstance(data_loader, PoissonDataLoader) else 1.0 / len(data_loader)
        if target_epsilon is not None:  # refused before any state is built
            one_step = accounting.epsilon_of(self.accountant, target_delta, accounting.with_steps(
                self.accountant.history, noise_multiplier, sample_rate, 1))
            if one_step > target_epsilon:
                raise ValueError(f"one step at noise multiplier {noise_multiplier:g} and sample rate {sample_rate:.4g} already "
                                 f"spends epsilon = {one_step:.4g}, more than the budget of {target_epsilon:g}: raise "
                                 "the noise multiplier (--sigma) or the budget (--epsilon).")
        if poisson_sampling:
            data_loader = PoissonDataLoader.from_data_loader(data_loader, generator=noise_generator, secure=self.secure_mode,
                                                             rank=rank, world_size=world_size)
            expected_batch_size = sample_rate * dataset_size
        else:
            expected_batch_size = data_loader.batch_size
            if expected_batch_size is None:
                raise ValueError("without Poisson sampling the data loader needs a fixed batch_size.")
        dp_optimizer = DPOptimizer(
            optimizer, dp_module,
            noise_multiplier=noise_multiplier,
            expected_batch_size=expected_batch_size,
            secure_mode=self.secure_mode,
            generator=noise_generator,
            distributed=distributed,
        )
        dp_optimizer.attach_step_hook(
            lambda opt: self.accountant.step(noise_multiplier=opt.noise_multiplier, sample_rate=sample_rate)
        )
        self.module, self.optimizer, self.data_loader = dp_module, dp_optimizer, data_loader
        self.sample_rate, self.dataset_size, self.poisson_sampling = sample_rate, dataset_size, poisson_sampling
        self.target_epsilon, self.target_delta = target_epsilon, target_delta
        self._refresh_budget()
        return dp_module, dp_optimizer, data_loader

    def record_release(self, noise_multiplier: float, sample_rate: float = 1.0, count: int = 1) -> None:
        """Compose ``count`` Gaussian mechanisms at (``noise_multiplier``, ``sample_rate``) on the training data,
        released before training (for example private normalisation statistics): epsilon includes them, and
        ``make_private_with_epsilon`` calibrates the DP-SGD noise to what they leave of the budget."""
        if self.optimizer is not None:
            raise RuntimeError("record releases before make_private: the budget and the noise are set there.")
        if not noise_multiplier > 0 or not 0 < sample_rate <= 1 or count < 1:
            raise ValueError(f"a release needs noise_multiplier > 0, 0 < sample_rate <= 1 and count >= 1; got "
                             f"{noise_multiplier}, {sample_rate}, {count}.")
        entry = (float(noise_multiplier), float(sample_rate), int(count))
        self.releases.append(entry)
        self.accountant.history.append(entry)

    def make_private_with_epsilon(
        self,
        *,
        module: nn.Module,
        optimizer: Optimizer,
        data_loader: DataLoader,
        target_epsilon: float,
        target_delta: float,
        epochs: int,
        max_grad_norm: float | list[float],
        **kwargs,
    ) -> tuple[DPModule, DPOptimizer, DataLoader]:
        """Calibrate sigma (Opacus's search) so that ``epochs`` epochs spend at most ``target_epsilon``."""
        accounting.check_budget(target_epsilon, target_delta, len(data_loader.dataset),
                                allow_large_delta=kwargs.get("allow_large_delta", False))
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
            raise ValueError(f"epochs must be positive, got {epochs}.")
        sample_rate = 1.0 / len(data_loader)
        sigma = accounting.calibrate_noise(
            target_epsilon=target_epsilon,
            target_delta=target_delta,
            sample_rate=sample_rate,
            steps=int(epochs * len(data_loader)),
            accountant=self.accountant_name,
            prior=self.accountant.history,
        )
        return self.make_private(
            module=module, optimizer=optimizer, data_loader=data_loader, noise_multiplier=sigma,
            max_grad_norm=max_grad_norm, target_epsilon=target_epsilon, target_delta=target_delta, **kwargs,
        )

    # -- accounting --------------------------------------------------------------------------
    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (an upper bound; 0 before the first step)."""
        accounting.check_budget(None, delta)
        return accounting.epsilon_of(self.accountant, delta)

    @property
    def steps_taken(self) -> int:
        """DP-SGD steps only: releases recorded before training are in the history but are not steps."""
        return sum(int(h[2]) for h in self.accountant.history) - sum(r[2] for r in self.releases)

    @property
    def steps_remaining(self) -> int | None:
        """Steps left before the budget; None when no budget was set."""
        return None if self.optimizer is None else self.optimizer.steps_left

    def account_steps(self, steps: int) -> None:
        """Set the accountant to the releases recorded before training plus ``steps`` DP-SGD steps at this
        engine's (sigma, q), whatever it held before.

        This is how a resumed run rebuilds its accountant from the run store's count of started
        steps, the source of truth, instead of trusting the history a checkpoint file carries.
        """
        if self.optimizer is None:
            raise RuntimeError("call make_private before account_steps.")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}.")
        history = [tuple(r) for r in self.releases]
        if steps:
            history.append((self.optimizer.noise_multiplier, self.sample_rate, steps))
        self.accountant.history = history
        self._refresh_budget()

    def _refresh_budget(self) -> None:
        if self.optimizer is None or self.target_epsilon is None:
            return
        self.optimizer.steps_left = accounting.steps_within_budget(
            self.accountant,
            noise_multiplier=self.optimizer.noise_multiplier,
            sample_rate=self.sample_rate,
            target_epsilon=self.target_epsilon,
            delta=self.target_delta,
        )

    def privacy_statement(self, delta: float | None = None) -> PrivacyStatement:
        delta = delta if delta is not None else self.target_delta
        if delta is None or self.optimizer is None:
            raise ValueError("a privacy statement needs a private model and a delta.")
        return PrivacyStatement(
            dataset_size=self.dataset_size,
            sample_rate=self.sample_rate,
            noise_multiplier=self.optimizer.noise_multiplier,
            steps=self.steps_taken,
            accountant=self.accountant_name,
            epsilon=self.get_epsilon(delta),
            delta=delta,
            clipping=self.module.clipping,
            max_grad_norm=self.module.sensitivity,
            poisson_sampling=self.poisson_sampling,
            releases=tuple(self.releases),
            secure_mode=self.secure_mode,
        )

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path, *, extra: dict | None = None) -> None:
        """Write model, optimizer, accountant history and RNG states atomically (temp file + rename)."""
        if self.module is None:
            raise RuntimeError("nothing to checkpoint: call make_private first.")
        state = {
            "module": self.module._module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "accountant": self.accountant.state_dict(),
            "accountant_name": self.accountant_name,
            "torch_rng": torch.get_rng_state(),
            "sampler_rng": getattr(self.data_loader, "generator_state", None),
            "noise_rng": self.optimizer.generator.get_state() if self.optimizer.generator is not None else None,
            "extra": extra or {},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_checkpoint(self, path: str | Path, *, state: dict | None = None) -> dict:
        """Restore what :meth:`save_checkpoint` wrote; the accountant continues its history.

        ``state`` is the file's content when the caller has already read (and checked) it.
        """
        if self.module is None:
            raise RuntimeError("call make_private with the same model, optimizer and loader before load_checkpoint.")
        if state is None:
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)
            except FileNotFoundError:
                raise FileNotFoundError(f"checkpoint {path} does not exist.") from None
        if state.get("accountant_name") != self.accountant_name:
            raise ValueError(
                f"checkpoint {path} was accounted with {state.get('accountant_name')!r}, this engine uses "
                f"{self.accountant_name!r}: resume with the same accountant."
            )
        self.module._module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.accountant.load_state_dict(state["accountant"])
        torch.set_rng_state(state["torch_rng"])
        if state["sampler_rng"] is not None and hasattr(self.data_loader, "generator_state"):
            self.data_loader.generator_state = state["sampler_rng"]
        if state["noise_rng"] is not None and self.optimizer.generator is not None:
            self.optimizer.generator.set_state(state["noise_rng"])
        self._refresh_budget()
        return state["extra"]
