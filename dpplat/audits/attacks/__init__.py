"""Black-box evasion attacks, each in a standard and an OARS form (registry keyed by name)."""

from dpplat.audits.attacks.base import (MODES, Attack, AttackResult, AttackStopped, Knob, Oracle, available_attacks,
                                        attack_class, calibrate_knobs, create_attack, distance, register_attack)
from dpplat.audits.attacks import boundary, hsja, nes, qeba, square, surfree  # noqa: F401  (registers them)

__all__ = ["MODES", "Attack", "AttackResult", "AttackStopped", "Knob", "Oracle", "attack_class", "available_attacks",
           "calibrate_knobs", "create_attack", "distance", "register_attack"]
