"""DP-SGD with fused per-layer clipping (FlashDP) on PyTorch; usable on its own, like Opacus."""

from dpplat.engine.fused import DPModule, clip_factors
from dpplat.engine.optimizer import DPOptimizer, PrivacyBudgetExceeded
from dpplat.engine.privacy_engine import PrivacyEngine
from dpplat.engine.rules import LayerRule, RuleContext, register_rule
from dpplat.engine.sampler import PoissonDataLoader
from dpplat.engine.statement import PrivacyStatement

__all__ = [
    "DPModule", "DPOptimizer", "LayerRule", "PoissonDataLoader", "PrivacyBudgetExceeded",
    "PrivacyEngine", "PrivacyStatement", "RuleContext", "clip_factors", "register_rule",
]
