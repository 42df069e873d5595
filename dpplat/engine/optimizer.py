"""The DP optimizer: noise once per step, scaled by the sensitivity, then the user's optimizer.

The noise's standard deviation ``sigma * C`` and the division by the expected batch
size are computed here and nowhere else, from the module's sensitivity, so they
cannot drift apart from the clipping bound (jax_privacy's rule).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.optim import Optimizer

from dpplat.engine.fused import DPModule
from dpplat.engine.noise import add_gaussian_noise_all_


class PrivacyBudgetExceeded(RuntimeError):
    """Raised instead of taking a step that would push epsilon past the budget."""


class DPOptimizer:
    """Wraps an optimizer; ``step()`` privatises the gradients that the fused backward left.

    Parameters
    ----------
    optimizer: the user's optimizer over the module's parameters.
    module: the :class:`DPModule` whose backward produced the clipped sums.
    noise_multiplier: sigma; the noise's standard deviation is ``sigma * module.sensitivity``.
    expected_batch_size: the divisor of the noisy sum (q N under Poisson sampling).
    secure_mode: draw noise from the OS CSPRNG (see :mod:`dpplat.engine.noise`).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        module: DPModule,
        *,
        noise_multiplier: float,
        expected_batch_size: float,
        secure_mode: bool = False,
        generator: torch.Generator | None = None,
        distributed: bool = False,
    ) -> None:
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}.")
        if expected_batch_size <= 0:
            raise ValueError(f"expected_batch_size must be > 0, got {expected_batch_size}.")
        covered = {id(p) for p in module.trainable_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in covered:
                    raise ValueError("the optimizer holds a trainable parameter that is not part of the private module.")
        self.original_optimizer = optimizer
        self.module = module
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        self.secure_mode = secure_mode
        self.generator = generator
        self.distributed = distributed
        self.step_hooks: list[Callable[["DPOptimizer"], None]] = []
        # Fault injection for audits only: the noise drawn is this times sigma * C, while the accountant is
        # told sigma. Always 1 in real training.
        self.noise_fault_factor = 1.0
        # Fault injection for audits only: every rank of a data-parallel run adds its own draw (the error
        # of too much noise). Always False in real training.
        self.noise_on_every_rank = False
        self.steps_left: int | None = None

    @property
    def max_grad_norm(self):
        return self.module.max_grad_norm

    @property
    def param_groups(self):
        return self.original_optimizer.param_groups

    @property
    def state(self):
        return self.original_optimizer.state

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.module.sensitivity

    @property
    def _drawn_std(self) -> float:
        return self.noise_std * self.noise_fault_factor

    def attach_step_hook(self, fn: Callable[["DPOptimizer"], None]) -> None:
        self.step_hooks.append(fn)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.original_optimizer.zero_grad(set_to_none=set_to_none)
        self.module.clear_pending()

    def privatise_gradients(self) -> None:
        """Turn each ``.grad`` (the clipped sum) into ``(sum + N(0, sigma^2 C^2)) / expected_batch_size``."""
        self.module.finish_flat_clipping()
        params = self.module.trainable_parameters()
        for p in params:
            if p.grad is None:  # an empty batch, or a layer the batch never reached: its clipped sum is 0
                p.grad = torch.zeros_like(p)
        if self.distributed:
            self._all_reduce_with_noise_once(params)
        else:
            add_gaussian_noise_all_([p.grad for p in params], self._drawn_std, secure=self.secure_mode,
                                    generator=self.generator)
        for p in params:
            p.grad.div_(self.expected_batch_size)

    def _all_reduce_with_noise_once(self, params: list) -> None:
        """Data parallel: rank 0 adds the one N(0, sigma^2 C^2) draw to its share, then the shares are summed.

        Each sample's clipped gradient lives on exactly one rank, so the all-reduced sum is
        the global clipped sum plus exactly one noise draw, the same on every rank (so the
        replicas stay identical). Splitting the noise over ranks would need each rank's
        draw to stay secret from the others; noise on one rank needs no such trust.
        """
        import torch.distributed as dist

        if dist.get_rank() == 0 or self.noise_on_every_rank:
            add_gaussian_noise_all_([p.grad for p in params], self._drawn_std, secure=self.secure_mode,
                                    generator=self.generator)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def step(self, closure: Callable | None = None):
        if self.steps_left is not None and self.steps_left <= 0:
            raise PrivacyBudgetExceeded("the privacy budget is spent: another step would exceed the target epsilon.")
        if closure is not None:
            with torch.enable_grad():
                closure()
        self.privatise_gradients()
        for hook in self.step_hooks:
            hook(self)
        if self.steps_left is not None:
            self.steps_left -= 1
        return self.original_optimizer.step()

    def state_dict(self) -> dict:
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.original_optimizer.load_state_dict(state)
