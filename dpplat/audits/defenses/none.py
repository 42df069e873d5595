"""No defense: every query answered, nothing stored; the baseline every attack must beat."""

from __future__ import annotations

from dpplat.audits.defenses.base import StatefulDefense, register_defense


@register_defense("none")
class NoDefense(StatefulDefense):
    def _digest(self, x):
        return None

    def _lookup(self, digests, i):
        return False, None

    def _remember(self, digests, i) -> None:
        pass

    def _clear(self) -> None:
        pass
