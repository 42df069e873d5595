"""The fused per-layer clipping module: FlashDP's idea on PyTorch autograd.

Every module that has a rule runs its forward with detached parameters, so autograd
never forms the non-private weight gradient. A small autograd function (the *tap*)
sits on the module's output; in the backward pass it receives the output gradient,
asks the rule for each sample's gradient norm of that module, turns the norms into
clip factors and returns the clipped sum as the parameters' gradient. With
``clipping="per_layer"`` this all happens inside the backward, layer by layer, and
nothing per-sample outlives the layer. With ``clipping="flat"`` the factors need the
norm over all layers, so the tap keeps the layer's input and output gradient
(book-keeping, Bu et al. 2023) and :meth:`DPModule.finish_flat_clipping` forms the
clipped sums once the whole backward is done.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field

import torch
from torch import nn

from dpplat.engine.rules import RuleContext
from dpplat.engine.rules.registry import LayerRule, clip_factors
from dpplat.engine.validate import check_module


@dataclass
class Layer:
    """One clipping group: a module's trainable parameters together."""

    name: str
    module: nn.Module
    rule: LayerRule
    params: list[tuple[str, nn.Parameter]]
    bound: float = math.inf
    clipped: bool = True  # False only under an audit's fault injection (DPModule.skip_clipping)
    pending: list = field(default_factory=list)


class _ForwardPass:
    """One forward pass of a :class:`DPModule`: the layers it has tapped and the rows of the first tapped input.

    A fresh object each pass, not a counter: torch.compile treats a Python int it reads as a constant of the
    graph, so a counter would make dynamo recompile on every step, while an object created inside the traced
    forward is part of the trace. Flat clipping groups what the backward keeps by this object."""

    def __init__(self) -> None:
        self.tapped: set[str] = set()
        self.first: tuple[int, str] | None = None  # (rows, module name)


LOW_PRECISION = (torch.float16, torch.bfloat16)
UNCLIPPED = 1e30  # a bound no gradient reaches, finite so that float32 clip factors stay exactly 1


class _ClipTap(torch.autograd.Function):
    """Identity on the module's outputs whose backward produces the parameters' clipped gradients.

    ``tensors`` holds ``pairs`` outputs, then their ``pairs`` inputs, then the parameters. Autograd calls
    the backward once with every output's gradient, so a rule with several projections (attention's
    query, key and value) sees them all together."""

    @staticmethod
    def forward(ctx, layer: Layer, owner: "DPModule", forward_pass: _ForwardPass, pairs: int, *tensors):
        ctx.layer, ctx.owner, ctx.forward_pass, ctx.pairs = layer, owner, forward_pass, pairs
        ctx.save_for_backward(*tensors[pairs: 2 * pairs])
        outs = tuple(out.view_as(out) for out in tensors[:pairs])
        return outs[0] if pairs == 1 else outs

    @staticmethod
    def backward(ctx, *grad_outs: torch.Tensor):
        xs = ctx.saved_tensors
        x, grad_out = (xs[0], grad_outs[0]) if ctx.pairs == 1 else (tuple(xs), tuple(grad_outs))
        grads = ctx.owner._layer_backward(ctx.layer, ctx.forward_pass, x, grad_out)
        return (None, None, None, None, *grad_outs, *(None,) * ctx.pairs, *grads)


def _tap(module: nn.Module, outs: tuple[torch.Tensor, ...], xs: tuple[torch.Tensor, ...]):
    """Put the clipping tap on a module's outputs (one per input); returns them as one tensor or a tuple."""
    layer: Layer = module._dpplat_layer
    owner: DPModule = module._dpplat_owner
    if not torch.is_grad_enabled():
        return outs[0] if len(outs) == 1 else outs
    forward_pass = owner._forward_pass
    rows = xs[0].shape[0]
    if forward_pass.first is None:
        forward_pass.first = (rows, layer.name)
    elif rows != forward_pass.first[0]:
        raise RuntimeError(
            f"module '{layer.name}' got an input of {rows} rows where module '{forward_pass.first[1]}' got "
            f"{forward_pass.first[0]} in the same forward pass. Per-sample clipping needs every layer's input to "
            "hold the batch in its first dimension; an input shared by the batch (such as position ids of shape "
            "(1, T)) would mix the samples' gradients. Expand it to the batch, e.g. positions.expand(batch_size, -1)."
        )
    if layer.name in forward_pass.tapped:
        raise RuntimeError(
            f"module '{layer.name}' ran twice in one forward pass (shared weights). Per-sample clipping needs "
            "each trainable module applied once per sample; use separate modules instead of reusing one."
        )
    forward_pass.tapped.add(layer.name)
    return _ClipTap.apply(layer, owner, forward_pass, len(outs), *outs, *xs, *(p for _, p in layer.params))


def _tapped_forward(module: nn.Module, *args, **kwargs):
    rule = module._dpplat_layer.rule
    if rule.several_inputs:
        return rule.tapped_forward(module, lambda outs, xs: _tap(module, tuple(outs), tuple(xs)), *args, **kwargs)
    (x,) = args
    return _tap(module, (rule.forward(module, x),), (x,))


def _check_half_precision_overflow(layer: Layer, grads: tuple[torch.Tensor, ...]) -> None:
    """Refuse fp16 output gradients that overflowed: an infinite norm would clip to NaN, silently."""
    if any(g.dtype == torch.float16 and not torch.isfinite(g).all() for g in grads):
        raise FloatingPointError(
            f"the float16 gradient reaching '{layer.name}' overflowed (inf or nan): float16 cannot hold it, and "
            "clipping an infinite norm gives NaN. Train under bfloat16 autocast instead (float32's range), or "
            "scale the loss down. A GradScaler does not help here: clipping must see the unscaled gradients.")


class DPModule(nn.Module):
    """Wraps a model so that its backward pass leaves clipped, summed gradients in ``.grad``.

    Parameters
    ----------
    module: the model; every module with trainable parameters needs a registered rule.
    max_grad_norm: C. With ``clipping="per_layer"`` a float is split equally,
        ``C_l = C / sqrt(L)``, or a list gives each group's ``C_l``.
    clipping: ``"per_layer"`` (fused into the backward) or ``"flat"`` (one bound on the whole gradient).
    loss_reduction: ``"mean"`` or ``"sum"``, how the loss combines the batch's rows.

    Every layer's input must have the batch in dim 0 (batch first), as in Opacus's default.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        max_grad_norm: float | list[float],
        clipping: str = "per_layer",
        loss_reduction: str = "mean",
    ) -> None:
        super().__init__()
        if clipping not in ("per_layer", "flat"):
            raise ValueError(f"clipping must be 'per_layer' or 'flat', got {clipping!r}.")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}.")
        self._module = module
        self.clipping = clipping
        self.loss_reduction = loss_reduction
        self.augmentation_multiplicity = 1
        self._forward_pass = _ForwardPass()
        groups = check_module(module)
        self._layers = [
            Layer(name, sub, rule, [(n, p) for n, p in sub.named_parameters(recurse=False) if p.requires_grad])
            for name, sub, rule in groups
        ]
        self._set_bounds(max_grad_norm)
        for layer in self._layers:
            sub = layer.module
            # object.__setattr__: the owner must not become a registered submodule (that would be a cycle).
            object.__setattr__(sub, "_dpplat_layer", layer)
            object.__setattr__(sub, "_dpplat_owner", self)
            object.__setattr__(sub, "forward", types.MethodType(_tapped_forward, sub))

    def _set_bounds(self, max_grad_norm: float | list[float]) -> None:
        L = len(self._layers)
        if isinstance(max_grad_norm, (list, tuple)):
            if self.clipping == "flat":
                raise ValueError("clipping='flat' takes one max_grad_norm, not a list; use clipping='per_layer'.")
            if len(max_grad_norm) != L:
                names = ", ".join(layer.name for layer in self._layers)
                raise ValueError(f"max_grad_norm has {len(max_grad_norm)} entries but the model has {L} clipping groups: {names}.")
            bounds = [float(c) for c in max_grad_norm]
        else:
            total = float(max_grad_norm)
            bounds = [total / math.sqrt(L)] * L if self.clipping == "per_layer" else [total] * L
        if any(not (c > 0 and math.isfinite(c)) for c in bounds):
            raise ValueError(f"max_grad_norm must be positive and finite, got {max_grad_norm!r}.")
        for layer, bound in zip(self._layers, bounds):
            layer.bound = bound
        self.max_grad_norm = max_grad_norm
        self.sensitivity = math.sqrt(sum(c * c for c in bounds)) if self.clipping == "per_layer" else float(max_grad_norm)

    @property
    def clipping_groups(self) -> list[str]:
        return [layer.name for layer in self._layers]

    @property
    def per_layer_bounds(self) -> list[float]:
        return [layer.bound for layer in self._layers]

    @property
    def group_sizes(self) -> list[int]:
        """Each clipping group's number of trainable values, in :meth:`trainable_parameters` order."""
        return [sum(p.numel() for _, p in layer.params) for layer in self._layers]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self._layers for _, p in layer.params]

    def forward(self, *args, **kwargs):
        self._forward_pass = _ForwardPass()
        return self._module(*args, **kwargs)

    def _layer_backward(self, layer: Layer, forward_pass: _ForwardPass, x: torch.Tensor, grad_out: torch.Tensor):
        views = self.augmentation_multiplicity
        # Under autocast (bf16/fp16) the layer's input and output gradient arrive in low precision; norms,
        # clip factors and the clipped sum are computed from them in float32, and the sum is returned in the
        # parameters' own dtype, so the noise is drawn and added in float32 too. A rule with several inputs
        # gets tuples, each pair cast alike.
        several = isinstance(x, tuple)
        _check_half_precision_overflow(layer, grad_out if several else (grad_out,))
        xs = tuple(t.float() if t.is_floating_point() and t.dtype in LOW_PRECISION else t
                   for t in (x if several else (x,)))
        gs = tuple(g.float() if g.dtype in LOW_PRECISION else g for g in (grad_out if several else (grad_out,)))
        x, grad_out = (xs, gs) if several else (xs[0], gs[0])
        rows = xs[0].shape[0]
        if rows % views:
            raise RuntimeError(f"batch of {rows} rows is not a multiple of augmentation_multiplicity={views}.")
        if rows == 0:  # an empty Poisson batch: the clipped sum is zero, the noise still comes
            return [torch.zeros_like(p) for _, p in layer.params] if self.clipping == "per_layer" else [None] * len(layer.params)
        # Per-sample gradients are ``scale`` times what the raw output gradient gives. Rules work on the raw
        # gradient (no scaled copy of it); the scale goes into the bound and the result instead:
        # min(1, C / (s n)) s g = s min(1, (C / s) / n) g.
        scale = rows / views if self.loss_reduction == "mean" else 1.0 / views
        ctx = RuleContext(layer.module, x, grad_out, views)
        if self.clipping == "flat":
            layer.pending.append((forward_pass, ctx, scale, layer.rule.norm_sq(ctx) * scale**2))
            return [None] * len(layer.params)
        grads = layer.rule.clipped_grads_per_layer(ctx, self._bound_of(layer) / scale)
        return [grads[name].mul_(scale).to(param.dtype) for name, param in layer.params]

    def _bound_of(self, layer: Layer) -> float:
        return layer.bound if layer.clipped else UNCLIPPED

    @torch.no_grad()
    def add_example_gradients(self, gradients: torch.Tensor) -> None:
        """Clip given per-sample gradients as the backward clips an example's, and add their clipped sum to ``.grad``.

        ``gradients`` is (k, D), each row one example's whole gradient over :meth:`trainable_parameters`
        in order. This is how an audit's gradient canaries join a step: clipped with the same bounds
        and factors as every example (per group, or over the whole gradient with flat clipping),
        summed with them, and noised with them by the optimizer.
        """
        params = self.trainable_parameters()
        total = sum(p.numel() for p in params)
        if gradients.dim() != 2 or gradients.shape[1] != total:
            raise ValueError(f"example gradients must be (k, {total}), got {tuple(gradients.shape)}.")
        if len(gradients) == 0:
            return
        parts = list(gradients.split(self.group_sizes, dim=1))
        if self.clipping == "flat":
            factor = clip_factors(gradients.pow(2).sum(dim=1), self.sensitivity)
            factors = [factor] * len(parts)
        else:
            factors = [clip_factors(part.pow(2).sum(dim=1), self._bound_of(layer))
                       for part, layer in zip(parts, self._layers)]
        for layer, part, factor in zip(self._layers, parts, factors):
            summed = (factor[:, None] * part).sum(dim=0)
            offset = 0
            for _, param in layer.params:
                g = summed[offset: offset + param.numel()].view_as(param).to(param.dtype)
                param.grad = g.clone() if param.grad is None else param.grad + g
                offset += param.numel()

    def skip_clipping(self, group: int) -> None:
        """Fault injection for audits only: leave one clipping group's examples unclipped while the noise and
        the accountant still assume its bound. Never part of a real training run."""
        self._layers[group].clipped = False

    @torch.no_grad()
    def finish_flat_clipping(self) -> None:
        """Form the flat-clipped sums from what the backward kept; adds them to ``.grad``.

        Outside the backward autograd would record these operations on the kept activations; the
        gradients are results, not part of any graph."""
        if self.clipping != "flat":
            return
        totals: dict[_ForwardPass, torch.Tensor] = {}
        for layer in self._layers:
            for forward_pass, _, _, norm_sq in layer.pending:
                totals[forward_pass] = totals.get(forward_pass, 0) + norm_sq
        factors = {fp: clip_factors(t, self.sensitivity) for fp, t in totals.items()}
        for layer in self._layers:
            for forward_pass, ctx, scale, _ in layer.pending:
                grads = layer.rule.clipped_grads(ctx, factors[forward_pass] * scale)
                for name, param in layer.params:
                    g = grads[name]
                    param.grad = g.clone() if param.grad is None else param.grad + g
            layer.pending.clear()

    def clear_pending(self) -> None:
        for layer in self._layers:
            layer.pending.clear()

    def remove_hooks(self) -> nn.Module:
        """Restore the wrapped modules' own forward and return the plain model."""
        for layer in self._layers:
            sub = layer.module
            for attr in ("forward", "_dpplat_layer", "_dpplat_owner"):
                sub.__dict__.pop(attr, None)
        return self._module
