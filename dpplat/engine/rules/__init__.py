"""Per-layer clipping rules, one module per layer kind (as Opacus's ``grad_sample`` package).

Each rule knows, for one module type, how to run the module's forward with its
parameters detached (so autograd never computes the non-private gradient), how to
compute the per-sample gradient norm of the module's trainable parameters from the
saved input and the output gradient, and how to form the clipped sum
``sum_i c_i g_i`` without keeping per-sample gradients. A new layer kind is a new
file with a class decorated by :func:`register_rule`.
"""

from dpplat.engine.rules.registry import LayerRule, RuleContext, get_rule, register_rule, registered_types

# Importing the built-in rule modules registers them.
from dpplat.engine.rules import attention, conv, conv1d_hf, embedding, group_norm, layer_norm, linear, rms_norm  # noqa: F401,E402

__all__ = ["LayerRule", "RuleContext", "get_rule", "register_rule", "registered_types"]
