"""dpplat: train under a privacy budget, audit what was trained, review it in a dashboard."""

from dpplat.engine import PrivacyEngine

__version__ = "0.1.0"
__all__ = ["PrivacyEngine", "__version__"]
